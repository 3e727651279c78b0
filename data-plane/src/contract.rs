//! Contracts at the router: a request's JSON body checked against the `input` schemas that
//! apply to it (the named contract a call went through, then the function's own) after the
//! invoke policies and before anything is forwarded; a 2xx answer's body against `output`
//! when `validate_output` is set. Enforced: 400 `invalid_input` / 502 `invalid_output`,
//! each violation with its JSON pointer in `details.errors`. `mode: report`: let through,
//! logged, and named in `X-Reactor-Contract-Violations`.
//!
//! Bodies are checked whole: a checked request is read before it is forwarded, a checked
//! answer before it is sent (it is then no longer streamed).

use crate::table::Contract;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use reactor_api::contract::Mode;
use reactor_api::{ApiError, ErrorCode};
use reactor_contract::{Schema, Violation, check_body};
use std::sync::Arc;

/// The contracts an invocation is held to, each named for messages.
#[derive(Default)]
pub struct Checks {
    list: Vec<(String, Arc<Contract>)>,
}

/// What report mode let through: `input` and/or `output`, with a line for the log.
#[derive(Default)]
pub struct Reported {
    pub parts: Vec<&'static str>,
    pub notes: Vec<String>,
}

impl Checks {
    /// `via`: the named contract a call addressed; `own`: the live deployment's.
    pub fn new(via: Option<(String, Arc<Contract>)>, own: Option<Arc<Contract>>) -> Self {
        let mut list = Vec::new();
        list.extend(via.map(|(name, c)| (format!("contract {name}"), c)));
        list.extend(own.map(|c| ("its contract".to_string(), c)));
        Self { list }
    }

    /// Some contract has an input schema (or does not compile: the request is refused).
    pub fn wants_input(&self) -> bool {
        self.list.iter().any(|(_, c)| match c.as_ref() {
            Ok(c) => c.input.is_some(),
            Err(_) => true,
        })
    }

    /// Some contract validates answers.
    pub fn wants_output(&self) -> bool {
        self.list.iter().any(|(_, c)| {
            c.as_ref()
                .as_ref()
                .is_ok_and(|c| c.validate_output && c.output.is_some())
        })
    }

    /// Checks a request body (read whole, at most `limit` bytes), returning it to be sent
    /// on, or the refusal.
    pub async fn input(
        &self,
        function: &str,
        body: Body,
        limit: u64,
        reported: &mut Reported,
    ) -> Result<bytes::Bytes, ApiError> {
        let bytes = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
            .await
            .map_err(|e| {
                if too_long(&e) {
                    ApiError::new(
                        ErrorCode::PayloadTooLarge,
                        format!("the request body for function {function} is larger than {limit} bytes (functions.invoke_max_body_bytes)"),
                    )
                    .with_detail("max_body_bytes", limit)
                } else {
                    ApiError::new(
                        ErrorCode::InvalidInput,
                        format!("the request body could not be read: {e}"),
                    )
                }
            })?;
        for (name, contract) in &self.list {
            let c = compiled(contract, function)?;
            if let Some(schema) = &c.input {
                judge(schema, &bytes, c.mode, "input", name, function, reported)?;
            }
        }
        Ok(bytes)
    }

    /// Checks a 2xx answer's body when asked: the answer as it was, or 502
    /// `invalid_output` (report mode: as it was, noted).
    pub async fn output(
        &self,
        function: &str,
        head: bool,
        response: Response,
        limit: u64,
        reported: &mut Reported,
    ) -> Response {
        let status = response.status().as_u16();
        // No body to check: HEAD, 204, 205 (and 304 is not 2xx).
        if !response.status().is_success()
            || head
            || matches!(status, 204 | 205)
            || !self.wants_output()
        {
            return response;
        }
        let (parts, body) = response.into_parts();
        let bytes = match axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
            .await
        {
            Ok(b) => b,
            Err(e) => {
                return ApiError::new(
                    ErrorCode::InvalidOutput,
                    format!("the answer of function {function} could not be checked against its contract: {e} (at most {limit} bytes are read)"),
                )
                .into_response();
            }
        };
        for (name, contract) in &self.list {
            let Ok(c) = contract.as_ref() else { continue };
            if let (true, Some(schema)) = (c.validate_output, &c.output)
                && let Err(e) = judge(schema, &bytes, c.mode, "output", name, function, reported)
            {
                return e.into_response();
            }
        }
        // The answer is whole now: its length is known, however it was framed.
        let mut parts = parts;
        parts.headers.remove(http::header::TRANSFER_ENCODING);
        parts.headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(bytes.len()),
        );
        Response::from_parts(parts, Body::from(bytes))
    }
}

/// The body went over the limit `to_bytes` read it with.
fn too_long(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn compiled<'a>(
    contract: &'a Contract,
    function: &str,
) -> Result<&'a reactor_contract::Compiled, ApiError> {
    contract.as_ref().map_err(|e| {
        ApiError::internal(format!(
            "the contract of function {function} does not compile on this router: {e}"
        ))
    })
}

/// Most characters of one violation's message (they quote the offending value).
const MAX_MESSAGE: usize = 200;

/// One body against one schema: `Ok` when valid or only reported. An output violation
/// names where and which keyword, never the value: the answer is what is kept from the
/// client.
fn judge(
    schema: &Schema,
    body: &[u8],
    mode: Mode,
    part: &'static str,
    name: &str,
    function: &str,
    reported: &mut Reported,
) -> Result<(), ApiError> {
    let Err(mut violations) = check_body(schema, body) else {
        return Ok(());
    };
    for v in &mut violations {
        if part == "output" {
            v.message = format!("the value breaks the schema at {}", v.schema_path);
        } else if v.message.chars().count() > MAX_MESSAGE {
            v.message = v.message.chars().take(MAX_MESSAGE).collect::<String>() + "...";
        }
    }
    let summary = summary(&violations);
    if mode == Mode::Report {
        if !reported.parts.contains(&part) {
            reported.parts.push(part);
        }
        reported.notes.push(format!(
            "contract report: the {part} breaks {name}: {summary}"
        ));
        return Ok(());
    }
    let (code, message) = match part {
        "input" => (
            ErrorCode::InvalidInput,
            format!(
                "the request body breaks the input schema of {name} of function {function}: {summary}"
            ),
        ),
        _ => (
            ErrorCode::InvalidOutput,
            format!(
                "function {function} answered with a body that breaks the output schema of {name}: {summary}"
            ),
        ),
    };
    Err(ApiError::new(code, message)
        .with_detail("function", function)
        .with_detail(
            "errors",
            serde_json::to_value(&violations).unwrap_or_default(),
        ))
}

/// `"/to: ... (and 2 more)"`.
fn summary(violations: &[Violation]) -> String {
    let Some(first) = violations.first() else {
        return String::new();
    };
    let at = if first.pointer.is_empty() {
        "(the body)"
    } else {
        first.pointer.as_str()
    };
    let more = match violations.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    format!("{at}: {}{more}", first.message)
}
