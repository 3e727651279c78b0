//! Following the control plane over gRPC (`RoutingService.Watch`, see
//! [`reactor_proto::client::watch_routing`]). While the stream is down the router keeps
//! serving the last table it holds.

use crate::DataPlane;
pub use reactor_proto::client::ControlPlaneEndpoint;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Follows the control plane until the returned task is aborted.
pub fn follow_control_plane(dp: Arc<DataPlane>, endpoint: ControlPlaneEndpoint) -> JoinHandle<()> {
    reactor_proto::client::watch_routing(endpoint, move |table| {
        // A new stream starts with a snapshot, which may be of the version held (from
        // another control-plane replica, whose table at that version may differ): taken.
        if dp.apply_stream(table) {
            tracing::debug!(version = table.version, "routing table applied");
        }
    })
}
