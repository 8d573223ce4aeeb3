//! Leader election over a `coordination.k8s.io/v1` Lease (kube-lease-manager): only the replica
//! holding the lease writes. The returned channel says whether this replica leads now.

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

/// Lease parameters.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// Seconds a lease is valid without renewal.
    pub duration_secs: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_secs: u64,
}

/// This replica's place in the election. Dropping it stops renewing the lease at once (as a
/// crash would); the lease then expires and another replica takes over.
pub struct Election {
    /// `true` while this replica holds the lease.
    pub leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Joins the election.
pub async fn elect(
    client: Client,
    s: &LeaseSettings,
) -> Result<Election, kube_lease_manager::LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &s.name)
        .with_namespace(&s.namespace)
        .with_identity(&s.identity)
        .with_duration(s.duration_secs)
        .with_grace(s.grace_secs)
        .with_field_manager(crate::reconcile::MANAGER)
        .build()
        .await?;
    let (leading, task) = manager.watch().await;
    Ok(Election { leading, task })
}
