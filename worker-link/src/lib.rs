//! How a router reaches a worker service, how a worker makes itself known, and which
//! workers a deployment goes to ([`rendezvous`], the ranking routers, workers and the
//! control plane share).
//!
//! **Protocol** (one request per invocation, HTTP/2 over mutual TLS with `[internal] tls`,
//! else cleartext, streaming both ways): the
//! router sends the function's request as it is (method, headers, body streamed) to
//! `{worker}/invoke{path relative to the mount}`, with three internal headers: the
//! internal token ([`protocol::AUTH`]), the deployment to run ([`protocol::SPEC`], the
//! [`DeploymentSpec`](reactor_api::DeploymentSpec) as base64url JSON) and the time left
//! ([`protocol::TIMEOUT_MS`]). The worker answers with the function's response, streamed,
//! plus [`protocol::COLD_START`] and [`protocol::WORKER_MS`]; a failure before the headers
//! is [`protocol::ERROR`] with a JSON body, which the router turns into the public error.
//! A client going away resets the HTTP/2 stream, which drops the invocation on the worker.
//! The internal headers are removed on both sides, so a function never sees the token and
//! cannot forge the ones it would answer with.
//!
//! HTTP/2 was chosen over gRPC by measurement (`reactor-bench hop`, docs/benchmarks.md):
//! the request and response are HTTP already, so gRPC would add framing and a copy of
//! every body chunk into protobuf messages for nothing.
#![forbid(unsafe_code)]

pub mod calls;
pub mod client;
pub mod control;
pub mod protocol;
pub mod register;
pub mod rendezvous;
pub mod server;
pub mod service;

pub use client::RemoteWorkers;
pub use register::{Registration, prewarm, register};
pub use server::{BuildHost, worker_app};
