//! The Deployment controller's decisions, without I/O: upstream's
//! `syncDeployment` (pkg/controller/deployment: sync.go, rolling.go,
//! recreate.go, progress.go) run against in-memory copies of the
//! Deployment and its ReplicaSets. Each write upstream would send is
//! recorded, in order, as a [`Write`], and applied to the copies so later
//! steps see it, as upstream's later steps see the objects its writes
//! returned. The edge sends the writes in order and stops at the first
//! failure; the next sync starts again from what the caches then show.
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::chrono::{DateTime, Utc};

use super::revision;
use super::status::{self, rs_actual, rs_replicas};
use super::strategy::{self, RECREATE, ROLLING_UPDATE};
use crate::pods::{self, owner, template};

/// What a sync sees.
pub struct Input<'a> {
    pub deployment: &'a Deployment,
    /// The ReplicaSets the Deployment controls (claimed already).
    pub replica_sets: Vec<ReplicaSet>,
    /// Pods its selector matches, any phase: a Recreate rollout waits
    /// until old ones are gone. Unused by RollingUpdate.
    pub pods: &'a [Pod],
    pub now: DateTime<Utc>,
}

/// One write to a ReplicaSet, with the Event upstream records for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Create {
        rs: Box<ReplicaSet>,
        event: Option<String>,
    },
    /// Replicas, annotations and minReadySeconds, as they must become.
    Update {
        name: String,
        replicas: i32,
        annotations: BTreeMap<String, String>,
        min_ready_seconds: Option<i32>,
        event: Option<String>,
    },
    Delete {
        name: String,
        uid: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// The Deployment's annotations, when the revision changed.
    pub annotations: Option<BTreeMap<String, String>>,
    /// The Deployment's status, when it changed.
    pub status: Option<DeploymentStatus>,
    pub warnings: Vec<Warning>,
    /// Look again then even if nothing changes (the progress deadline).
    pub requeue_after: Option<Duration>,
}

pub fn plan(input: Input) -> Plan {
    let mut p = Planner {
        d: input.deployment.clone(),
        observed: input.deployment,
        rss: input.replica_sets,
        pods: input.pods,
        now: input.now,
        plan: Plan::default(),
    };
    p.sync_deployment();
    p.finish()
}

struct Planner<'a> {
    /// Working copy: annotations and status evolve as upstream's do.
    d: Deployment,
    observed: &'a Deployment,
    rss: Vec<ReplicaSet>,
    pods: &'a [Pod],
    now: DateTime<Utc>,
    plan: Plan,
}

fn name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

impl Planner<'_> {
    fn finish(mut self) -> Plan {
        if self.d.metadata.annotations != self.observed.metadata.annotations {
            self.plan.annotations = self.d.metadata.annotations.clone();
        }
        let new = status::status(&self.d);
        if new != status::status(self.observed) {
            self.plan.status = Some(new);
        }
        self.plan
    }

    fn want(&self) -> i32 {
        strategy::replicas(&self.d)
    }

    fn spec(&self, i: usize) -> i32 {
        rs_replicas(&self.rss[i])
    }

    fn rs_name(&self, i: usize) -> String {
        name(&self.rss[i].metadata)
    }

    fn template(&self) -> k8s_openapi::api::core::v1::PodTemplateSpec {
        self.d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default()
    }

    fn has_deadline(&self) -> bool {
        status::progress_deadline(&self.d).is_some()
    }

    fn set_condition(&mut self, c: k8s_openapi::api::apps::v1::DeploymentCondition) {
        let mut s = self.d.status.clone().unwrap_or_default();
        status::set_condition(&mut s, c);
        self.d.status = Some(s);
    }

    fn progressing_reason(&self) -> Option<String> {
        status::get_condition(&status::status(&self.d), status::PROGRESSING)
            .and_then(|c| c.reason.clone())
    }

    /// Indices sorted oldest first (creation time, then name).
    fn by_creation(&self, mut idx: Vec<usize>) -> Vec<usize> {
        idx.sort_by_key(|i| {
            let m = &self.rss[*i].metadata;
            (m.creation_timestamp.clone(), m.name.clone())
        });
        idx
    }

    fn active(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter().copied().filter(|i| self.spec(*i) > 0).collect()
    }

    fn sum_spec(&self, idx: &[usize]) -> i32 {
        idx.iter().map(|i| self.spec(*i)).sum()
    }

    fn with_new(old: &[usize], new: Option<usize>) -> Vec<usize> {
        old.iter().copied().chain(new).collect()
    }

    // ---- syncDeployment -------------------------------------------------

    fn sync_deployment(&mut self) {
        let selector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && selector
                .match_expressions
                .as_ref()
                .is_none_or(|e| e.is_empty())
        {
            self.plan.warnings.push(Warning {
                reason: "SelectingAll",
                message: "This deployment is selecting all pods. A non-empty selector is required."
                    .into(),
            });
            let generation = self.d.metadata.generation;
            let mut s = status::status(&self.d);
            if s.observed_generation < generation {
                s.observed_generation = generation;
                self.d.status = Some(s);
            }
            return;
        }
        if self.d.metadata.deletion_timestamp.is_some() {
            return self.sync_status_only();
        }
        self.check_paused_conditions();
        if self.paused() || self.is_scaling_event() {
            return self.sync();
        }
        match strategy::strategy_type(&self.d) {
            RECREATE => self.rollout_recreate(),
            ROLLING_UPDATE => self.rollout_rolling(),
            // Refused by validation; report, change nothing.
            _ => self.sync_status_only(),
        }
    }

    fn paused(&self) -> bool {
        self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
    }

    fn sync_status_only(&mut self) {
        let (new, old) = self.get_all_and_sync_revision(false);
        let all = Self::with_new(&old, new);
        self.sync_deployment_status(&all, new);
    }

    /// Scaling (and paused Deployments): no rollout, proportional scaling.
    fn sync(&mut self) {
        let (new, old) = self.get_all_and_sync_revision(false);
        self.scale(new, &old);
        if self.paused() {
            self.cleanup(&old);
        }
        let all = Self::with_new(&old, new);
        self.sync_deployment_status(&all, new);
    }

    /// A paused Deployment says so in Progressing (Unknown), so time spent
    /// paused never counts against the progress deadline.
    fn check_paused_conditions(&mut self) {
        if !self.has_deadline() {
            return;
        }
        let reason = self.progressing_reason();
        if reason.as_deref() == Some(status::PROGRESS_DEADLINE_EXCEEDED) {
            return;
        }
        let paused_exists = reason.as_deref() == Some(status::PAUSED);
        if self.paused() && !paused_exists {
            let c = status::new_condition(
                status::PROGRESSING,
                "Unknown",
                status::PAUSED,
                "Deployment is paused".into(),
                self.now,
            );
            self.set_condition(c);
        } else if !self.paused() && paused_exists {
            let c = status::new_condition(
                status::PROGRESSING,
                "Unknown",
                status::RESUMED,
                "Deployment is resumed".into(),
                self.now,
            );
            self.set_condition(c);
        }
    }

    /// The Deployment was scaled: an active ReplicaSet's desired-replicas
    /// annotation disagrees with `spec.replicas`.
    fn is_scaling_event(&mut self) -> bool {
        let (new, old) = self.get_all_and_sync_revision(false);
        let want = self.want();
        self.active(&Self::with_new(&old, new))
            .iter()
            .any(|i| revision::desired_replicas(&self.rss[*i]).is_some_and(|d| d != want))
    }

    // ---- new and old ReplicaSets -----------------------------------------

    /// The oldest ReplicaSet running the Deployment's template.
    fn find_new(&self) -> Option<usize> {
        let t = self.template();
        self.by_creation((0..self.rss.len()).collect())
            .into_iter()
            .find(|i| {
                self.rss[*i]
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|rt| template::equal_ignore_hash(rt, &t))
            })
    }

    /// (new, all old oldest first); with `create`, a missing new
    /// ReplicaSet is created. Syncs the revision annotations either way.
    fn get_all_and_sync_revision(&mut self, create: bool) -> (Option<usize>, Vec<usize>) {
        let existing = self.find_new();
        let old: Vec<usize> = self
            .by_creation((0..self.rss.len()).collect())
            .into_iter()
            .filter(|i| Some(*i) != existing)
            .collect();
        let new = self.get_new_replica_set(existing, &old, create);
        (new, old)
    }

    fn get_new_replica_set(
        &mut self,
        existing: Option<usize>,
        old: &[usize],
        create: bool,
    ) -> Option<usize> {
        let new_revision = revision::max_revision(old.iter().map(|i| &self.rss[*i])) + 1;
        let min_ready = self.d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        if let Some(i) = existing {
            let mut rs = self.rss[i].clone();
            let annotations_changed =
                revision::set_new_rs_annotations(&self.d, &mut rs, new_revision, true);
            let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if annotations_changed || rs_min_ready.unwrap_or(0) != min_ready.unwrap_or(0) {
                if let Some(s) = rs.spec.as_mut() {
                    s.min_ready_seconds = min_ready;
                }
                self.update(i, rs, None);
                return Some(i);
            }
            let rev = revision::revision(&rs.metadata)
                .map(|r| r.to_string())
                .unwrap_or_default();
            revision::set_deployment_revision(&mut self.d, &rev);
            if self.has_deadline() && self.progressing_reason().is_none() {
                let c = status::new_condition(
                    status::PROGRESSING,
                    "True",
                    status::FOUND_NEW_REPLICA_SET,
                    format!("Found new replica set {:?}", self.rs_name(i)),
                    self.now,
                );
                self.set_condition(c);
            }
            return Some(i);
        }
        if !create {
            return None;
        }
        let i = self.create_new_replica_set(old, new_revision, min_ready);
        revision::set_deployment_revision(&mut self.d, &new_revision.to_string());
        if self.has_deadline() {
            let c = status::new_condition(
                status::PROGRESSING,
                "True",
                status::NEW_REPLICA_SET_CREATED,
                format!("Created new replica set {:?}", self.rs_name(i)),
                self.now,
            );
            self.set_condition(c);
        }
        Some(i)
    }

    fn create_new_replica_set(
        &mut self,
        old: &[usize],
        new_revision: i64,
        min_ready: Option<i32>,
    ) -> usize {
        let collision = status::status(&self.d).collision_count;
        let mut t = self.template();
        let hash = template::compute_hash(&t, collision);
        t.metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(template::POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let mut selector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(template::POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let name = format!("{}-{hash}", name(&self.d.metadata));
        let labels = t.metadata.as_ref().and_then(|m| m.labels.clone());
        self.rss.push(ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: self.d.metadata.namespace.clone(),
                owner_references: Some(vec![owner::controller_ref(self.observed)]),
                labels,
                // What the server will stamp; only sorting reads it here.
                creation_timestamp: Some(Time(self.now)),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: min_ready,
                selector,
                template: Some(t),
            }),
            status: None,
        });
        let i = self.rss.len() - 1;
        let count = self.new_rs_new_replicas(&Self::with_new(old, Some(i)), i);
        if let Some(s) = self.rss[i].spec.as_mut() {
            s.replicas = Some(count);
        }
        let mut rs = self.rss[i].clone();
        revision::set_new_rs_annotations(&self.d, &mut rs, new_revision, false);
        self.rss[i] = rs.clone();
        rs.metadata.creation_timestamp = None;
        self.plan.writes.push(Write::Create {
            rs: Box::new(rs),
            event: (count > 0).then(|| format!("Scaled up replica set {name} to {count}")),
        });
        i
    }

    /// How big the new ReplicaSet may be now: a rolling update fills the
    /// room `maxSurge` leaves over all ReplicaSets, up to `replicas`.
    fn new_rs_new_replicas(&self, all: &[usize], new: usize) -> i32 {
        let want = self.want();
        if strategy::strategy_type(&self.d) == RECREATE {
            return want;
        }
        let current = self.sum_spec(all);
        let max_total = want + strategy::max_surge(&self.d);
        if current >= max_total {
            return self.spec(new);
        }
        let up = (max_total - current).min(want - self.spec(new));
        self.spec(new) + up
    }

    // ---- writes ----------------------------------------------------------

    fn update(&mut self, i: usize, mut rs: ReplicaSet, event: Option<String>) {
        let before = self.rss[i]
            .spec
            .as_ref()
            .map(|s| (s.replicas, s.min_ready_seconds));
        let after = rs.spec.as_ref().map(|s| (s.replicas, s.min_ready_seconds));
        if before != after {
            // As the server will: a spec change is a new generation.
            rs.metadata.generation = Some(rs.metadata.generation.unwrap_or(0) + 1);
        }
        self.plan.writes.push(Write::Update {
            name: name(&rs.metadata),
            replicas: rs_replicas(&rs),
            annotations: rs.metadata.annotations.clone().unwrap_or_default(),
            min_ready_seconds: rs.spec.as_ref().and_then(|s| s.min_ready_seconds),
            event,
        });
        self.rss[i] = rs;
    }

    fn scale_and_record(&mut self, i: usize, to: i32) -> bool {
        if self.spec(i) == to {
            return false;
        }
        let op = if self.spec(i) < to { "up" } else { "down" };
        self.scale_replica_set(i, to, op)
    }

    /// Sets the size and the replicas annotations; true if the size moved.
    fn scale_replica_set(&mut self, i: usize, to: i32, op: &str) -> bool {
        let want = self.want();
        let max = want + strategy::max_surge(&self.d);
        let size_changes = self.spec(i) != to;
        if !size_changes && !revision::replicas_annotations_need_update(&self.rss[i], want, max) {
            return false;
        }
        let from = self.spec(i);
        let mut rs = self.rss[i].clone();
        if let Some(s) = rs.spec.as_mut() {
            s.replicas = Some(to);
        }
        revision::set_replicas_annotations(&mut rs, want, max);
        let event = size_changes.then(|| {
            format!(
                "Scaled {op} replica set {} to {to} from {from}",
                self.rs_name(i)
            )
        });
        self.update(i, rs, event);
        size_changes
    }

    // ---- scaling (sync) --------------------------------------------------

    /// The only active ReplicaSet, or the newest when none is active; None
    /// when several are active (proportional scaling).
    fn find_active_or_latest(&self, new: Option<usize>, old: &[usize]) -> Option<usize> {
        let mut newest_first = self.by_creation(old.to_vec());
        newest_first.reverse();
        let active = self.active(&Self::with_new(&newest_first, new));
        match active.len() {
            0 => new.or(newest_first.first().copied()),
            1 => Some(active[0]),
            _ => None,
        }
    }

    fn is_saturated(&self, new: Option<usize>) -> bool {
        let Some(i) = new else {
            return false;
        };
        let want = self.want();
        let rs = &self.rss[i];
        self.spec(i) == want
            && revision::desired_replicas(rs) == Some(want)
            && status::rs_available(rs) == want
    }

    fn scale(&mut self, new: Option<usize>, old: &[usize]) {
        let want = self.want();
        if let Some(i) = self.find_active_or_latest(new, old) {
            if self.spec(i) != want {
                self.scale_and_record(i, want);
            }
            return;
        }
        if self.is_saturated(new) {
            for o in self.active(old) {
                self.scale_and_record(o, 0);
            }
            return;
        }
        if !strategy::is_rolling(&self.d) {
            return;
        }
        let mut newest_first = self.by_creation(old.to_vec());
        newest_first.reverse();
        let mut all = self.active(&Self::with_new(&newest_first, new));
        let allowed = if want > 0 {
            want + strategy::max_surge(&self.d)
        } else {
            0
        };
        let to_add = allowed - self.sum_spec(&all);
        let op = match to_add.signum() {
            1 => {
                // Bigger first; newer first among equals.
                all.sort_by_key(|i| {
                    let m = &self.rss[*i].metadata;
                    (
                        Reverse(self.spec(*i)),
                        Reverse((m.creation_timestamp.clone(), m.name.clone())),
                    )
                });
                "up"
            }
            -1 => {
                // Bigger first; older first among equals.
                all.sort_by_key(|i| {
                    let m = &self.rss[*i].metadata;
                    (
                        Reverse(self.spec(*i)),
                        (m.creation_timestamp.clone(), m.name.clone()),
                    )
                });
                "down"
            }
            _ => "",
        };
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::with_capacity(all.len());
        for &i in &all {
            if to_add != 0 {
                let p = self.proportion(i, to_add, added);
                sizes.push(self.spec(i) + p);
                added += p;
            } else {
                sizes.push(self.spec(i));
            }
        }
        if let Some(first) = sizes.first_mut()
            && to_add != 0
        {
            // Leftovers go to the biggest.
            *first = (*first + to_add - added).max(0);
        }
        for (k, &i) in all.iter().enumerate() {
            self.scale_replica_set(i, sizes[k], op);
        }
    }

    /// Upstream's `GetProportion`: this ReplicaSet's share of `to_add`,
    /// never past what is left to add (or remove).
    fn proportion(&self, i: usize, to_add: i32, added: i32) -> i32 {
        if self.spec(i) == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = self.fraction(i);
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    /// Upstream's `getReplicaSetFraction`: the size this ReplicaSet would
    /// have at the new Deployment size, keeping its share of the old size
    /// (the max-replicas annotation), minus its size.
    fn fraction(&self, i: usize) -> i32 {
        let want = self.want();
        let spec = self.spec(i);
        if want == 0 {
            return -spec;
        }
        let max_now = want + strategy::max_surge(&self.d);
        let before = match revision::max_replicas(&self.rss[i]) {
            Some(m) if m != 0 => m,
            _ => status::status(&self.d).replicas.unwrap_or(0),
        };
        if before == 0 {
            return 0;
        }
        let size = f64::from(spec) * f64::from(max_now) / f64::from(before);
        size.round() as i32 - spec
    }

    // ---- rolling update --------------------------------------------------

    fn rollout_rolling(&mut self) {
        let (new, old) = self.get_all_and_sync_revision(true);
        let all = Self::with_new(&old, new);
        let Some(n) = new else {
            return self.sync_rollout_status(&all, new);
        };
        if self.reconcile_new(&all, n) {
            return self.sync_rollout_status(&all, new);
        }
        let active_old = self.active(&old);
        if self.reconcile_old(&all, &active_old, n) {
            return self.sync_rollout_status(&all, new);
        }
        if status::complete(&self.d, &status::status(&self.d)) {
            self.cleanup(&old);
        }
        self.sync_rollout_status(&all, new);
    }

    fn reconcile_new(&mut self, all: &[usize], new: usize) -> bool {
        let want = self.want();
        if self.spec(new) == want {
            return false;
        }
        if self.spec(new) > want {
            return self.scale_and_record(new, want);
        }
        let count = self.new_rs_new_replicas(all, new);
        self.scale_and_record(new, count)
    }

    fn reconcile_old(&mut self, all: &[usize], old: &[usize], new: usize) -> bool {
        if self.sum_spec(old) == 0 {
            return false;
        }
        let all_pods = self.sum_spec(all);
        let min_available = self.want() - strategy::max_unavailable(&self.d);
        let new_unavailable = self.spec(new) - status::rs_available(&self.rss[new]);
        // Room to scale down without going under minAvailable, counting
        // the new ReplicaSet's unavailable Pods as already missing.
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        let Some(cleaned) = self.cleanup_unhealthy(old, max_scaled_down) else {
            return false;
        };
        let all = Self::with_new(old, Some(new));
        let scaled = self.scale_down_old_for_rolling(&all, old);
        cleaned + scaled > 0
    }

    /// Scales old ReplicaSets down by their unavailable Pods first (they
    /// are deleted first, so availability does not drop). None: a
    /// ReplicaSet reports more available Pods than it wants; upstream
    /// stops there.
    fn cleanup_unhealthy(&mut self, old: &[usize], max_cleanup: i32) -> Option<i32> {
        let mut total = 0;
        for i in self.by_creation(old.to_vec()) {
            if total >= max_cleanup {
                break;
            }
            let spec = self.spec(i);
            let available = status::rs_available(&self.rss[i]);
            if spec == 0 || spec == available {
                continue;
            }
            let down = (max_cleanup - total).min(spec - available);
            if down < 0 {
                return None;
            }
            self.scale_and_record(i, spec - down);
            total += down;
        }
        Some(total)
    }

    /// Scales old ReplicaSets down, oldest first, by what is available
    /// beyond `replicas - maxUnavailable`.
    fn scale_down_old_for_rolling(&mut self, all: &[usize], old: &[usize]) -> i32 {
        let min_available = self.want() - strategy::max_unavailable(&self.d);
        let available: i32 = all
            .iter()
            .map(|i| status::rs_available(&self.rss[*i]))
            .sum();
        if available <= min_available {
            return 0;
        }
        let budget = available - min_available;
        let mut total = 0;
        for i in self.by_creation(old.to_vec()) {
            if total >= budget {
                break;
            }
            let spec = self.spec(i);
            if spec == 0 {
                continue;
            }
            let down = spec.min(budget - total);
            self.scale_and_record(i, spec - down);
            total += down;
        }
        total
    }

    // ---- recreate --------------------------------------------------------

    fn rollout_recreate(&mut self) {
        // No new ReplicaSet before the old Pods are gone.
        let (new, old) = self.get_all_and_sync_revision(false);
        let all = Self::with_new(&old, new);
        let mut scaled = false;
        for i in self.active(&old) {
            scaled |= self.scale_and_record(i, 0);
        }
        if scaled || self.old_pods_running(new, &old) {
            return self.sync_rollout_status(&all, new);
        }
        let (new, old) = match new {
            Some(_) => (new, old),
            None => self.get_all_and_sync_revision(true),
        };
        if let Some(n) = new {
            let want = self.want();
            self.scale_and_record(n, want);
        }
        if status::complete(&self.d, &status::status(&self.d)) {
            self.cleanup(&old);
        }
        let all = Self::with_new(&old, new);
        self.sync_rollout_status(&all, new);
    }

    /// An old ReplicaSet still counts Pods, or a Pod of one is not
    /// finished (terminating ones included).
    fn old_pods_running(&self, new: Option<usize>, old: &[usize]) -> bool {
        if old.iter().map(|i| rs_actual(&self.rss[*i])).sum::<i32>() > 0 {
            return true;
        }
        let new_uid = new.and_then(|i| self.rss[i].metadata.uid.clone());
        let uids: Vec<&str> = self
            .rss
            .iter()
            .filter_map(|rs| rs.metadata.uid.as_deref())
            .filter(|u| Some(*u) != new_uid.as_deref())
            .collect();
        self.pods.iter().any(|p| {
            owner::controller_of(&p.metadata).is_some_and(|r| uids.contains(&r.uid.as_str()))
                && !matches!(pods::phase(p), "Succeeded" | "Failed")
        })
    }

    // ---- history ---------------------------------------------------------

    /// Deletes the oldest revisions past `revisionHistoryLimit`, only ones
    /// scaled to zero with no Pods left and their scale observed.
    fn cleanup(&mut self, old: &[usize]) {
        let Some(limit) = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .filter(|l| *l != i32::MAX)
        else {
            return;
        };
        let mut cleanable: Vec<usize> = old
            .iter()
            .copied()
            .filter(|i| self.rss[*i].metadata.deletion_timestamp.is_none())
            .collect();
        let excess = cleanable.len() as i64 - i64::from(limit);
        if excess <= 0 {
            return;
        }
        cleanable.sort_by_key(|i| {
            let m = &self.rss[*i].metadata;
            (
                revision::revision(m).unwrap_or(0),
                m.creation_timestamp.clone(),
                m.name.clone(),
            )
        });
        for &i in cleanable.iter().take(excess as usize) {
            let rs = &self.rss[i];
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if rs_actual(rs) != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            self.plan.writes.push(Write::Delete {
                name: name(&rs.metadata),
                uid: rs.metadata.uid.clone().unwrap_or_default(),
            });
            self.rss[i].metadata.deletion_timestamp = Some(Time(self.now));
        }
    }

    // ---- status ----------------------------------------------------------

    fn refs(&self, idx: &[usize]) -> Vec<&ReplicaSet> {
        idx.iter().map(|i| &self.rss[*i]).collect()
    }

    fn sync_deployment_status(&mut self, all: &[usize], new: Option<usize>) {
        let s = status::calculate(
            &self.refs(all),
            new.map(|i| &self.rss[i]),
            &self.d,
            self.now,
        );
        self.d.status = Some(s);
    }

    /// Upstream's `syncRolloutStatus`: the counts, and Progressing moved
    /// to NewReplicaSetAvailable, ReplicaSetUpdated or
    /// ProgressDeadlineExceeded.
    fn sync_rollout_status(&mut self, all: &[usize], new: Option<usize>) {
        let new_rs = new.map(|i| &self.rss[i]);
        let mut s = status::calculate(&self.refs(all), new_rs, &self.d, self.now);
        let has_deadline = self.has_deadline();
        if !has_deadline {
            status::remove_condition(&mut s, status::PROGRESSING);
        }
        let current = status::get_condition(&status::status(&self.d), status::PROGRESSING).cloned();
        let complete_already = s.replicas == s.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref())
                == Some(status::NEW_REPLICA_SET_AVAILABLE);
        let who = match new_rs {
            Some(rs) => format!("ReplicaSet {:?}", name(&rs.metadata)),
            None => format!("Deployment {:?}", name(&self.d.metadata)),
        };
        if has_deadline && !complete_already {
            if status::complete(&self.d, &s) {
                status::set_condition(
                    &mut s,
                    status::new_condition(
                        status::PROGRESSING,
                        "True",
                        status::NEW_REPLICA_SET_AVAILABLE,
                        format!("{who} has successfully progressed."),
                        self.now,
                    ),
                );
            } else if status::progressing(&self.d, &s) {
                let mut c = status::new_condition(
                    status::PROGRESSING,
                    "True",
                    status::REPLICA_SET_UPDATED,
                    format!("{who} is progressing."),
                    self.now,
                );
                // Progress moves lastUpdateTime even with the same reason.
                if let Some(cur) = &current {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    status::remove_condition(&mut s, status::PROGRESSING);
                }
                status::set_condition(&mut s, c);
            } else if status::timed_out(&self.d, &s, self.now) {
                status::set_condition(
                    &mut s,
                    status::new_condition(
                        status::PROGRESSING,
                        "False",
                        status::PROGRESS_DEADLINE_EXCEEDED,
                        format!("{who} has timed out progressing."),
                        self.now,
                    ),
                );
            }
        }
        match self.replica_failure(all, new) {
            Some(c) => status::set_condition(&mut s, c),
            None => status::remove_condition(&mut s, status::REPLICA_FAILURE),
        }
        let s = status::normalized(&s);
        if s == status::status(&self.d) {
            self.plan.requeue_after = status::recheck_for_deadline(&self.d, &s, self.now);
        } else {
            self.d.status = Some(s);
        }
    }

    /// The new ReplicaSet's ReplicaFailure, else any old one's.
    fn replica_failure(
        &self,
        all: &[usize],
        new: Option<usize>,
    ) -> Option<k8s_openapi::api::apps::v1::DeploymentCondition> {
        let failure = |i: &usize| {
            self.rss[*i]
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == status::REPLICA_FAILURE)
                .map(status::from_replica_set_failure)
        };
        new.iter()
            .find_map(failure)
            .or_else(|| all.iter().find_map(failure))
    }
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
