//! The ServiceAccount controller (upstream
//! pkg/controller/serviceaccount): a `default` ServiceAccount in every
//! Namespace, created when missing and again when deleted, except in a
//! Namespace being deleted.
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::Instrument;

use crate::informer::mirror;
use crate::workqueue::WorkQueue;
use crate::{Context, api_error};

/// The accounts every Namespace gets (upstream's serviceAccountsToEnsure).
pub const ENSURED: &[&str] = &["default"];

/// True when `namespace` should have the account and `exists` says it has
/// not. Upstream checks phase Active; a Namespace the API left without a
/// phase is active too, as long as it is not being deleted.
pub fn needs_account(namespace: &Namespace, exists: bool) -> bool {
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    !exists && !terminating
}

pub fn account(namespace: &str, name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

struct Shared {
    client: Client,
    namespaces: Store<Namespace>,
    accounts: Store<ServiceAccount>,
    queue: WorkQueue<String>,
}

pub async fn run(ctx: Context) -> Result<(), crate::Error> {
    let client = ctx.client.clone();
    let (namespaces, namespaces_w) = reflector::store();
    let (accounts, accounts_w) = reflector::store();
    let sh = Arc::new(Shared {
        client: client.clone(),
        namespaces,
        accounts,
        queue: WorkQueue::default(),
    });
    let enqueue_all = || {
        for ns in sh.namespaces.state() {
            sh.queue.add(ns.name_any());
        }
    };
    let watch_namespaces = mirror(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        namespaces_w,
        |ns, _| sh.queue.add(ns.name_any()),
        enqueue_all,
    );
    let fields = ENSURED
        .iter()
        .map(|n| format!("metadata.name={n}"))
        .collect::<Vec<_>>()
        .join(",");
    // Only the ensured accounts; a delete of one is what matters.
    let watch_accounts = mirror(
        Api::<ServiceAccount>::all(client),
        watcher::Config::default().fields(&fields),
        accounts_w,
        |sa, _| {
            if let Some(ns) = sa.namespace() {
                sh.queue.add(ns);
            }
        },
        enqueue_all,
    );
    let worker = async {
        if sh.namespaces.wait_until_ready().await.is_err()
            || sh.accounts.wait_until_ready().await.is_err()
        {
            return;
        }
        // One worker, as upstream runs it.
        loop {
            let ns = sh.queue.get().await;
            let span = tracing::info_span!("sync_serviceaccounts", namespace = ns);
            match sync(&sh, &ns).instrument(span.clone()).await {
                Ok(()) => sh.queue.forget(&ns),
                Err(e) => {
                    span.in_scope(
                        || tracing::warn!(error = %e, "ensuring ServiceAccounts failed; retrying"),
                    );
                    sh.queue.add_rate_limited(ns.clone());
                }
            }
            sh.queue.done(&ns);
        }
    };
    tokio::select! {
        _ = ctx.shutdown.cancelled() => {}
        _ = futures::future::join3(watch_namespaces, watch_accounts, worker) => {}
    }
    Ok(())
}

async fn sync(sh: &Shared, ns: &str) -> Result<(), kube::Error> {
    let Some(namespace) = sh.namespaces.get(&ObjectRef::new(ns)) else {
        return Ok(());
    };
    let api: Api<ServiceAccount> = Api::namespaced(sh.client.clone(), ns);
    for name in ENSURED {
        let exists = sh.accounts.get(&ObjectRef::new(name).within(ns)).is_some();
        if !needs_account(&namespace, exists) {
            continue;
        }
        match api.create(&PostParams::default(), &account(ns, name)).await {
            Ok(_) => tracing::info!(account = name, "created"),
            // The store was behind, or the Namespace is going away.
            Err(e)
                if api_error::is_already_exists(&e) || api_error::is_namespace_terminating(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ns(phase: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("team".into()),
                ..Default::default()
            },
            status: phase.map(|p| NamespaceStatus {
                phase: Some(p.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[allow(dead_code)]
    fn run_can_be_spawned(ctx: Context) {
        tokio::spawn(run(ctx));
    }

    #[test]
    fn an_active_namespace_without_the_account_needs_it() {
        assert!(needs_account(&ns(Some("Active")), false));
        assert!(needs_account(&ns(None), false), "no phase yet is active");
        assert!(!needs_account(&ns(Some("Active")), true));
    }

    #[test]
    fn a_terminating_namespace_gets_no_account() {
        assert!(!needs_account(&ns(Some("Terminating")), false));
        let mut n = ns(Some("Active"));
        n.metadata.deletion_timestamp = Some(Time(k8s_openapi::chrono::Utc::now()));
        assert!(!needs_account(&n, false));
    }

    #[test]
    fn the_account_is_named_and_placed() {
        let sa = account("team", "default");
        assert_eq!(sa.metadata.name.as_deref(), Some("default"));
        assert_eq!(sa.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(ENSURED, ["default"]);
    }
}
