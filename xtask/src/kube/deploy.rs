//! Rolling a Kubernetes environment out through the API: `deploy --env
//! staging|prod`, its `--dry-run`, `diff` and `rollback`.
//!
//! One deploy, in order:
//!
//! 1. **Discovery**: each rendered kind is looked up on the server. A
//!    custom resource whose CRD is absent is named with what installs it,
//!    and fails the deploy unless `--skip-missing-crds` leaves it out.
//! 2. **The plan**: every object is applied with `dryRun=All` (server-side
//!    apply, field manager `freedumb`) and compared with the live one, both
//!    stripped of what the server sets (`diff.rs`). Conflicts with another
//!    field manager come out here, before anything changed, naming the
//!    manager and its fields (`--force-conflicts` takes them). With nothing
//!    to change the deploy says so and applies nothing; `--dry-run` and
//!    `diff` print the differences and stop.
//! 3. **Apply** what changed, for real: the Namespace first, then the
//!    ApplySet parent (`applyset.rs`: its group-kinds widened to the new
//!    ones before any member carries them, as kubectl does), then the rest
//!    in the plan's order; a workload that reads the Secret of an
//!    ExternalSecret waits for the ExternalSecret to be Ready first.
//! 4. **Wait** for every changed Deployment as `kubectl rollout status`
//!    does, failing fast on a doomed pod of a new ReplicaSet (`wait.rs`).
//! 5. **Roll back** on any failure after the first change: each object that
//!    changed goes back, by server-side apply, to its version in the set
//!    last rolled out (kept in the parent), an object this deploy created
//!    is deleted, and the rollback is waited for with the same waiter. The
//!    command fails naming what failed. Never `rollout undo`, whose
//!    ReplicaSet-template copy leaves the applied configuration behind.
//! 6. **Prune** (`--prune`): members of the set that are no longer rendered
//!    are listed, then deleted (PersistentVolumeClaims and Namespaces only
//!    with `--prune-allow-data-loss`). Nothing outside the set is touched.
//! 7. The parent records the set rolled out (and keeps the one before, for
//!    `rollback`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ::kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy};
use ::kube::core::{GroupVersion, Status};
use ::kube::discovery::{self, ApiGroup, ApiResource, Scope};
use ::kube::{Client, ResourceExt};
use anyhow::{Context, anyhow, bail};
use serde_json::Value;

use super::applyset::{self, ApplySet, Parent, Record};
use super::plan::{self, Key, Object};
use super::{FIELD_MANAGER, diff, wait};
use crate::progress::{Event, Progress};

/// What a deploy may do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Compare only: `deploy --dry-run` and `diff`.
    pub dry_run: bool,
    pub force_conflicts: bool,
    pub skip_missing_crds: bool,
    pub prune: bool,
    pub prune_allow_data_loss: bool,
    /// How long the rollouts (and the ExternalSecret) get, at most: their
    /// progress deadlines fail them sooner.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            force_conflicts: false,
            skip_missing_crds: false,
            prune: false,
            prune_allow_data_loss: false,
            timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// What a deploy did: the `summary` of `--output json`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub context: String,
    pub namespace: String,
    pub image: String,
    /// False when the cluster already held exactly this.
    pub changed: bool,
    /// The set's revision now serving (successful deploys so far).
    pub revision: u64,
    /// The objects created or changed.
    pub applied: Vec<String>,
    pub pruned: Vec<String>,
    /// `--dry-run`, `diff`: one unified diff per object that would change.
    #[serde(skip)]
    pub diff: String,
}

/// An object and where the server serves its kind.
#[derive(Debug, Clone)]
struct Resolved {
    object: Object,
    resource: ApiResource,
    namespaced: bool,
}

/// What the plan found for one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Configure,
    Unchanged,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Create => "created",
            Action::Configure => "configured",
            Action::Unchanged => "unchanged",
        }
    }
}

#[derive(Debug, Clone)]
struct Planned {
    resolved: Resolved,
    live: Option<Value>,
    /// What the dry run returned (the rendered object, when its namespace
    /// does not exist yet and the server cannot dry-run it).
    merged: Value,
    action: Action,
}

/// The deployer of one environment's namespace on one cluster.
pub struct Deployer<'a> {
    pub client: Client,
    pub context: String,
    pub namespace: String,
    pub options: Options,
    pub progress: &'a Progress,
    set: ApplySet,
    /// Discovered API groups, by group/version.
    groups: BTreeMap<String, Option<ApiGroup>>,
}

/// `PatchParams` of every apply: our field manager, `force` only when asked.
pub fn apply_params(dry_run: bool, force: bool) -> PatchParams {
    PatchParams { dry_run, force, field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() }
}

/// A server-side apply conflict, from the API's 409: the other managers and
/// the fields they own.
pub fn conflicts(key: &Key, status: &Status) -> String {
    let mut by_manager: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for cause in status.details.iter().flat_map(|d| d.causes.iter()) {
        // `conflict with "kubectl-edit" using apps/v1`
        let manager = cause.message.split('"').nth(1).unwrap_or(&cause.message).to_owned();
        by_manager.entry(manager).or_default().push(cause.field.clone());
    }
    if by_manager.is_empty() {
        return format!("{key}: {}", status.message);
    }
    by_manager
        .iter()
        .map(|(manager, fields)| format!("{key}: field manager \"{manager}\" owns {}", fields.join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn api_error(err: &::kube::Error) -> Option<&Status> {
    match err {
        ::kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

impl<'a> Deployer<'a> {
    pub fn new(client: Client, context: &str, namespace: &str, options: Options, progress: &'a Progress) -> Self {
        Deployer {
            client,
            context: context.to_owned(),
            namespace: namespace.to_owned(),
            options,
            progress,
            set: ApplySet::new(namespace),
            groups: BTreeMap::new(),
        }
    }

    /// The server's resource for a group/version/kind; None when it does
    /// not serve it (a CRD that is not installed).
    async fn resource(
        &mut self,
        group: &str,
        version: &str,
        kind: &str,
    ) -> anyhow::Result<Option<(ApiResource, bool)>> {
        let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
        if !self.groups.contains_key(&gv) {
            let parsed: GroupVersion = gv.parse().map_err(|err| anyhow!("{gv} is not a group/version: {err}"))?;
            let found = match discovery::pinned_group(&self.client, &parsed).await {
                Ok(group) => Some(group),
                Err(err) if api_error(&err).is_some_and(|s| s.code == 404) => None,
                Err(::kube::Error::Discovery(_)) => None,
                Err(err) => return Err(err).with_context(|| format!("failed to discover {gv} on the server")),
            };
            self.groups.insert(gv.clone(), found);
        }
        let found = self.groups[&gv].as_ref().and_then(|group| group.recommended_kind(kind));
        Ok(found.map(|(resource, capabilities)| (resource, capabilities.scope == Scope::Namespaced)))
    }

    /// Every object with its resource; absent CRDs named with what installs
    /// them, an error unless `skip_missing_crds`.
    async fn resolve(&mut self, objects: Vec<Object>) -> anyhow::Result<Vec<Resolved>> {
        let mut resolved = Vec::new();
        let mut missing = Vec::new();
        for object in objects {
            match self.resource(&object.group, &object.version, &object.kind).await? {
                Some((resource, namespaced)) => resolved.push(Resolved { object, resource, namespaced }),
                None => missing.push(object),
            }
        }
        if missing.is_empty() {
            return Ok(resolved);
        }
        let lines: Vec<String> = missing
            .iter()
            .map(|object| {
                let installer = plan::installer(&object.group)
                    .map_or_else(|| format!("whatever provides {}", object.api_version()), str::to_owned);
                format!(
                    "{} ({}): the cluster does not serve {}; install {installer}",
                    object.key(),
                    object.file,
                    object.api_version()
                )
            })
            .collect();
        if !self.options.skip_missing_crds {
            bail!(
                "{} rendered object(s) need a CRD the cluster lacks (--skip-missing-crds leaves them out):\n  {}",
                missing.len(),
                lines.join("\n  ")
            );
        }
        for line in lines {
            self.progress.warn(format!("left out: {line}"));
        }
        Ok(resolved)
    }

    fn api(&self, resolved: &Resolved) -> Api<DynamicObject> {
        match (&resolved.object.namespace, resolved.namespaced) {
            (Some(namespace), true) => Api::namespaced_with(self.client.clone(), namespace, &resolved.resource),
            _ => Api::all_with(self.client.clone(), &resolved.resource),
        }
    }

    /// Server-side apply of one object.
    async fn apply(&self, resolved: &Resolved, dry_run: bool) -> Result<Value, ::kube::Error> {
        let params = apply_params(dry_run, self.options.force_conflicts);
        let applied =
            self.api(resolved).patch(&resolved.object.name, &params, &Patch::Apply(&resolved.object.value)).await?;
        Ok(serde_json::to_value(applied).expect("serialisable"))
    }

    /// The live object, if any.
    async fn live(&self, resolved: &Resolved) -> anyhow::Result<Option<Value>> {
        let live = self
            .api(resolved)
            .get_opt(&resolved.object.name)
            .await
            .with_context(|| format!("failed to read {}", resolved.object.key()))?;
        Ok(live.map(|object| serde_json::to_value(object).expect("serialisable")))
    }

    /// Dry-runs every object and compares it with the live one. Conflicts
    /// are collected and reported together.
    async fn plan(&self, resolved: Vec<Resolved>) -> anyhow::Result<Vec<Planned>> {
        // Namespaces that do not exist yet: their objects cannot be
        // dry-run (the server answers 404), and are all new.
        let mut absent_namespaces = BTreeSet::new();
        let mut planned = Vec::new();
        let mut conflicts = Vec::new();
        for resolved in resolved {
            let key = resolved.object.key();
            let in_absent = resolved.object.namespace.as_ref().is_some_and(|ns| absent_namespaces.contains(ns));
            let live = if in_absent { None } else { self.live(&resolved).await? };
            if resolved.object.kind == "Namespace" && resolved.object.group.is_empty() && live.is_none() {
                absent_namespaces.insert(resolved.object.name.clone());
            }
            let merged = if in_absent {
                resolved.object.value.clone()
            } else {
                match self.apply(&resolved, true).await {
                    Ok(merged) => merged,
                    Err(err) if api_error(&err).is_some_and(|s| s.code == 409) => {
                        conflicts.push(self::conflicts(&key, api_error(&err).expect("an API error")));
                        continue;
                    }
                    Err(err) => {
                        return Err(err)
                            .with_context(|| format!("the server refused {key} ({})", resolved.object.file));
                    }
                }
            };
            let action = match &live {
                None => Action::Create,
                Some(live) if diff::strip(live) == diff::strip(&merged) => Action::Unchanged,
                Some(_) => Action::Configure,
            };
            planned.push(Planned { resolved, live, merged, action });
        }
        if !conflicts.is_empty() {
            bail!(
                "server-side apply conflicts: another field manager owns fields that {FIELD_MANAGER} sets (--force-conflicts \
                 takes them over):\n  {}",
                conflicts.join("\n  ").replace('\n', "\n  ")
            );
        }
        Ok(planned)
    }

    /// The live ApplySet parent, read (and refused when another tool's).
    async fn parent(&self) -> anyhow::Result<Option<Parent>> {
        let secrets: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &secret_resource());
        let parent = secrets.get_opt(applyset::PARENT_NAME).await.with_context(|| {
            format!("failed to read the ApplySet parent {}/{}", self.namespace, applyset::PARENT_NAME)
        })?;
        parent.map(|p| self.set.read(&serde_json::to_value(p).expect("serialisable"))).transpose()
    }

    async fn write_parent(&self, group_kinds: &BTreeSet<String>, record: &Record) -> anyhow::Result<()> {
        let secrets: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &secret_resource());
        // Ours alone: nothing else may own its fields, so force.
        secrets
            .patch(
                applyset::PARENT_NAME,
                &apply_params(false, true),
                &Patch::Apply(self.set.parent(group_kinds, record)),
            )
            .await
            .with_context(|| {
                format!("failed to write the ApplySet parent {}/{}", self.namespace, applyset::PARENT_NAME)
            })?;
        Ok(())
    }

    /// The set's members on the server: every object of the parent's (and
    /// the render's) group-kinds labelled with the set's id.
    async fn members(
        &mut self,
        group_kinds: &BTreeSet<String>,
        rendered: &[Resolved],
    ) -> anyhow::Result<Vec<(Key, Resolved)>> {
        let selector = format!("{}={}", applyset::PART_OF_LABEL, self.set.id);
        let mut members = Vec::new();
        for group_kind in group_kinds {
            let (kind, group) = group_kind.split_once('.').unwrap_or((group_kind.as_str(), ""));
            let known = rendered.iter().find(|r| r.object.kind == kind && r.object.group == group);
            let (resource, namespaced) = match known {
                Some(r) => (r.resource.clone(), r.namespaced),
                None => match discovery::group(&self.client, group).await.ok().and_then(|g| g.recommended_kind(kind)) {
                    Some((resource, capabilities)) => (resource, capabilities.scope == Scope::Namespaced),
                    None => {
                        self.progress
                            .warn(format!("the server no longer serves {group_kind}: its members cannot be listed"));
                        continue;
                    }
                },
            };
            let api: Api<DynamicObject> = if namespaced {
                Api::namespaced_with(self.client.clone(), &self.namespace, &resource)
            } else {
                Api::all_with(self.client.clone(), &resource)
            };
            let listed = api
                .list(&ListParams::default().labels(&selector))
                .await
                .with_context(|| format!("failed to list the set's {group_kind} members"))?;
            for item in listed.items {
                // Checked again here: an object outside the set is never touched.
                if item.labels().get(applyset::PART_OF_LABEL) != Some(&self.set.id) {
                    continue;
                }
                let namespace = item.namespace();
                let name = item.name_any();
                let key = Key {
                    group: group.to_owned(),
                    kind: kind.to_owned(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                };
                let object = Object {
                    group: group.to_owned(),
                    version: resource.version.clone(),
                    kind: kind.to_owned(),
                    namespace,
                    name,
                    file: "the cluster".to_owned(),
                    value: serde_json::to_value(&item).expect("serialisable"),
                };
                members.push((key, Resolved { object, resource: resource.clone(), namespaced }));
            }
        }
        Ok(members)
    }

    async fn delete(&self, resolved: &Resolved) -> anyhow::Result<()> {
        let params =
            DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() };
        match self.api(resolved).delete(&resolved.object.name, &params).await {
            Ok(_) => Ok(()),
            Err(err) if api_error(&err).is_some_and(|s| s.code == 404) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("failed to delete {}", resolved.object.key())),
        }
    }

    /// Applies what changed in `planned` for real, in order, and returns
    /// the keys applied. The parent is written (widened to `group_kinds`)
    /// right after the Namespaces.
    async fn apply_changes(
        &self,
        planned: &[Planned],
        group_kinds: &BTreeSet<String>,
        record: &Record,
        applied: &mut Vec<Key>,
    ) -> anyhow::Result<()> {
        let mut parent_written = false;
        // The Secrets an ExternalSecret of the set writes, and whether it
        // has been waited for.
        let external: BTreeMap<String, &Planned> = planned
            .iter()
            .filter(|p| p.resolved.object.kind == "ExternalSecret")
            .map(|p| (plan::external_secret_target(&p.resolved.object), p))
            .collect();
        let mut synced = BTreeSet::new();
        for planned_object in planned {
            let object = &planned_object.resolved.object;
            if !parent_written && object.kind != "Namespace" {
                self.write_parent(group_kinds, record).await?;
                parent_written = true;
            }
            if object.is_workload() && planned_object.action != Action::Unchanged {
                for secret in plan::secrets_needed(&object.value) {
                    if let Some(external_secret) = external.get(&secret)
                        && synced.insert(secret.clone())
                    {
                        let es = &external_secret.resolved;
                        let namespace = es.object.namespace.as_deref().unwrap_or(&self.namespace);
                        let waited = wait::until_ready(
                            &self.client,
                            &es.resource,
                            namespace,
                            &es.object.name,
                            self.options.timeout,
                        )
                        .await
                        .with_context(|| format!("{} needs Secret {secret}", object.key()))?;
                        self.progress.emit(Event::SecretReady {
                            object: es.object.key().to_string(),
                            seconds: waited.as_secs_f64(),
                        });
                    }
                }
            }
            if planned_object.action == Action::Unchanged {
                self.progress
                    .emit(Event::ObjectApplied { object: object.key().to_string(), action: "unchanged".to_owned() });
                continue;
            }
            self.apply(&planned_object.resolved, false)
                .await
                .map_err(|err| match api_error(&err) {
                    Some(status) if status.code == 409 => anyhow!("{}", conflicts(&object.key(), status)),
                    _ => anyhow!(err),
                })
                .with_context(|| format!("failed to apply {} ({})", object.key(), object.file))?;
            applied.push(object.key());
            self.progress.emit(Event::ObjectApplied {
                object: object.key().to_string(),
                action: planned_object.action.word().to_owned(),
            });
        }
        if !parent_written {
            self.write_parent(group_kinds, record).await?;
        }
        Ok(())
    }

    /// Rolls `objects` out: plan, apply, wait; on a failure, back to
    /// `fallback` (the set live before). `record` makes the parent's record
    /// from the objects rolled out.
    async fn roll_out(
        &mut self,
        objects: Vec<Object>,
        image: &str,
        parent: Option<Parent>,
        fallback: Option<Vec<Value>>,
        record: impl FnOnce(&Record, Vec<Value>) -> Record,
    ) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        let mut objects = objects;
        plan::label(&mut objects, applyset::PART_OF_LABEL, &self.set.id);
        let resolved = self.resolve(objects).await?;
        let planned = self.plan(resolved.clone()).await?;
        let parent = parent.unwrap_or_default();
        let rendered_kinds = applyset::group_kinds(resolved.iter().map(|r| &r.object));
        let superset: BTreeSet<String> = parent.group_kinds.union(&rendered_kinds).cloned().collect();
        let rendered_keys: BTreeSet<Key> = resolved.iter().map(|r| r.object.key()).collect();
        let members = self.members(&superset, &resolved).await?;
        let member_keys: Vec<Key> = members.iter().map(|(key, _)| key.clone()).collect();
        let prune = applyset::prune(
            &member_keys,
            &rendered_keys,
            &applyset::parent_key(&self.namespace),
            self.options.prune_allow_data_loss,
        );
        let changed: Vec<&Planned> = planned.iter().filter(|p| p.action != Action::Unchanged).collect();
        let mut outcome = Outcome {
            context: self.context.clone(),
            namespace: self.namespace.clone(),
            image: image.to_owned(),
            changed: false,
            revision: parent.record.revision,
            applied: changed.iter().map(|p| p.resolved.object.key().to_string()).collect(),
            pruned: Vec::new(),
            diff: String::new(),
        };
        if self.options.dry_run {
            for p in &changed {
                let key = p.resolved.object.key();
                outcome.diff.push_str(&diff::unified(
                    &key,
                    &p.resolved.object.version,
                    p.live.as_ref(),
                    Some(&p.merged),
                ));
            }
            if self.options.prune {
                for (key, member) in members.iter().filter(|(key, _)| prune.delete.contains(key)) {
                    outcome.diff.push_str(&diff::unified(
                        key,
                        &member.object.version,
                        Some(&member.object.value),
                        None,
                    ));
                }
            }
            outcome.changed = !outcome.diff.is_empty();
            return Ok(outcome);
        }
        let to_prune = if self.options.prune { prune.delete.clone() } else { Vec::new() };
        let not_pruned: Vec<&Key> = if self.options.prune {
            prune.keep.iter().collect()
        } else {
            prune.delete.iter().chain(&prune.keep).collect()
        };
        if !not_pruned.is_empty() {
            let why = if self.options.prune { "--prune-allow-data-loss deletes them" } else { "--prune deletes them" };
            self.progress.warn(format!(
                "{} member(s) of the set are no longer rendered and stay ({why}): {}",
                not_pruned.len(),
                not_pruned.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        if changed.is_empty() && to_prune.is_empty() {
            self.progress.emit(Event::NothingToDo {
                project: format!("{}/{}", self.context, self.namespace),
                image: image.to_owned(),
            });
            return Ok(outcome);
        }
        outcome.changed = true;
        self.progress.step(format!(
            "applying to {}/{} (server-side, field manager {FIELD_MANAGER}): {} to create, {} to configure, {} unchanged, {} to prune",
            self.context,
            self.namespace,
            planned.iter().filter(|p| p.action == Action::Create).count(),
            planned.iter().filter(|p| p.action == Action::Configure).count(),
            planned.len() - changed.len(),
            to_prune.len()
        ));
        let workloads: BTreeSet<String> = changed
            .iter()
            .filter(|p| p.resolved.object.is_workload())
            .map(|p| p.resolved.object.name.clone())
            .collect();
        let mut applied = Vec::new();
        let result = async {
            self.apply_changes(&planned, &superset, &parent.record, &mut applied).await?;
            if !workloads.is_empty() {
                self.progress.step(format!(
                    "waiting for {} to roll out",
                    workloads.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
                wait::rollouts(&self.client, &self.namespace, &workloads, self.options.timeout, self.progress).await?;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if let Err(failure) = result {
            return Err(self.fall_back(&planned, &applied, fallback, &parent, failure).await);
        }
        if !to_prune.is_empty() {
            self.progress.step(format!(
                "pruning {} member(s) no longer rendered: {}",
                to_prune.len(),
                to_prune.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
            ));
            for (key, member) in members.iter().filter(|(key, _)| to_prune.contains(key)) {
                self.delete(member).await?;
                self.progress.emit(Event::ObjectPruned { object: key.to_string() });
                outcome.pruned.push(key.to_string());
            }
        }
        // The kinds of what remains: the render's, and those of members
        // left in place.
        let mut kinds = rendered_kinds;
        kinds.extend(
            member_keys.iter().filter(|k| !to_prune.contains(k) && !rendered_keys.contains(k)).map(Key::group_kind),
        );
        let applied_values: Vec<Value> = resolved.iter().map(|r| r.object.value.clone()).collect();
        let new_record = record(&parent.record, applied_values);
        self.write_parent(&kinds, &new_record).await?;
        outcome.revision = new_record.revision;
        self.progress.emit(Event::Converged {
            project: format!("{}/{}", self.context, self.namespace),
            image: image.to_owned(),
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok(outcome)
    }

    /// After `failure`: every object this run applied goes back to its
    /// version in `fallback`, or is deleted when it had none (it did not
    /// exist before); then the rollback is waited for. Returns the error
    /// the command fails with.
    async fn fall_back(
        &mut self,
        planned: &[Planned],
        applied: &[Key],
        fallback: Option<Vec<Value>>,
        parent: &Parent,
        failure: anyhow::Error,
    ) -> anyhow::Error {
        if applied.is_empty() {
            return failure;
        }
        let Some(fallback) = fallback else {
            return failure.context(
                "the deploy failed, and this set has never rolled out before: there is nothing to roll back to, so the \
                 objects stay as applied",
            );
        };
        self.progress.step(format!(
            "the rollout failed; rolling {} back to revision {}",
            self.namespace, parent.record.revision
        ));
        let result = async {
            let mut previous = applyset::keyed(&fallback)?;
            let mut back = Vec::new();
            let mut workloads = BTreeSet::new();
            for key in applied {
                let planned =
                    planned.iter().find(|p| p.resolved.object.key() == *key).expect("applied objects are planned");
                match previous.remove(key) {
                    Some(object) => {
                        if object.is_workload() {
                            workloads.insert(object.name.clone());
                        }
                        back.push(Resolved { object, ..planned.resolved.clone() });
                    }
                    None if planned.action == Action::Create
                        && !matches!(key.kind.as_str(), "Namespace" | "PersistentVolumeClaim") =>
                    {
                        self.delete(&planned.resolved).await?;
                        self.progress.emit(Event::ObjectPruned { object: key.to_string() });
                    }
                    None => {}
                }
            }
            back.sort_by_key(|r| plan::rank(&r.object.kind));
            for resolved in &back {
                self.apply(resolved, false)
                    .await
                    .with_context(|| format!("failed to roll {} back", resolved.object.key()))?;
                self.progress.emit(Event::ObjectApplied {
                    object: resolved.object.key().to_string(),
                    action: "rolled back".to_owned(),
                });
            }
            if !workloads.is_empty() {
                wait::rollouts(&self.client, &self.namespace, &workloads, self.options.timeout, self.progress).await?;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                self.progress.emit(Event::SetRolledBack {
                    namespace: self.namespace.clone(),
                    revision: parent.record.revision,
                    reason: format!("{failure:#}").lines().next().unwrap_or_default().to_owned(),
                });
                failure.context(format!(
                    "the deploy failed and was rolled back: revision {} of {}/{} serves again",
                    parent.record.revision, self.context, self.namespace
                ))
            }
            Err(rollback) => failure.context(format!("the deploy failed, and so did its rollback: {rollback:#}")),
        }
    }

    /// `deploy`: rolls the rendered `objects` out.
    pub async fn deploy(&mut self, objects: Vec<Object>, image: &str) -> anyhow::Result<Outcome> {
        let parent = self.parent().await?;
        let fallback = parent.as_ref().and_then(|p| p.record.current.clone());
        self.roll_out(objects, image, parent, fallback, |record, applied| record.rolled_out(applied)).await
    }

    /// `rollback`: rolls the set before the current one out again.
    pub async fn roll_back(&mut self) -> anyhow::Result<Outcome> {
        let Some(parent) = self.parent().await? else {
            bail!(
                "{}/{} has no ApplySet parent ({}): nothing was deployed here, so there is nothing to roll back",
                self.context,
                self.namespace,
                applyset::PARENT_NAME
            );
        };
        let Some(previous) = parent.record.previous.clone() else {
            bail!(
                "{}/{} has rolled out only one set so far: there is no previous one to roll back to",
                self.context,
                self.namespace
            );
        };
        let objects: Vec<Object> = applyset::keyed(&previous)?.into_values().collect();
        let mut objects = objects;
        objects.sort_by_key(|o| plan::rank(&o.kind));
        let image = image_of(&objects);
        let fallback = parent.record.current.clone();
        self.roll_out(objects, &image, Some(parent), fallback, |record, _| record.rolled_back()).await
    }
}

/// The image of a set's first workload, for messages.
pub fn image_of(objects: &[Object]) -> String {
    objects
        .iter()
        .find(|o| o.is_workload())
        .and_then(|o| o.value.pointer("/spec/template/spec/containers/0/image"))
        .and_then(Value::as_str)
        .unwrap_or("(no workload)")
        .to_owned()
}

/// Secrets: the core group's, served everywhere.
fn secret_resource() -> ApiResource {
    ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&())
}

#[cfg(test)]
#[path = "deploy_tests.rs"]
mod tests;
