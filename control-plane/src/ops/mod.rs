//! The control plane's operations, one module per concern: each is an `impl ControlPlane`
//! block whose methods take the authenticated caller ([`Caller`](crate::auth::Caller)).
//! The state they work on, and the helpers they share, live in `crate::service`.

mod contracts;
mod deploy;
mod env;
mod functions;
mod identity;
mod policies;
mod release;
mod users;
