//! Importing keys: a batch checked and inserted in a few statements.

use std::collections::{HashMap, HashSet};

use keysmith_core::store::{ImportOutcome, StoredKey};
use keysmith_core::{Error, KeyId, PolicyId, Result, Tenant};

use sqlx::types::Json;

use super::{BindScoped as _, push_tenant};
use crate::common::{corrupt, key_insert_error, store_error};
use crate::dialect::{Dialect, Exec as _, Sql, statement};
use crate::rows::{self, Columns as _};

/// Which of `keys`' hashes are held already: by `tenant`'s keys
/// (`true`) or another tenant's (`false`).
async fn held_hashes_on<DB: Dialect>(
    conn: &mut DB::Connection, tenant: &Tenant, keys: &[StoredKey],
) -> Result<HashMap<String, bool>> {
    let mut held = HashMap::new();
    // By hash alone, so that the unique index on it answers; the
    // tenant is compared here.
    for chunk in keys.chunks(1000) {
        let mut qb = Sql::<DB>::new("SELECT hash, app_id, tenant_id FROM keysmith_keys WHERE hash IN (");
        let mut list = qb.separated(", ");
        for stored in chunk {
            list.push_arg(stored.hash.to_hex());
        }
        qb.push(")");
        let (sql, args) = qb.finish()?;
        for row in
            sqlx::query_with::<DB, _>(&sql, args).persistent(false).fetch_all(conn.exec()).await.map_err(store_error)?
        {
            held.insert(DB::text(&row, "hash")?, rows::tenant::<DB>(&row)? == *tenant);
        }
    }
    Ok(held)
}

/// The source ids (`external_id` in the metadata) of `keys` that
/// `tenant`'s keys were imported from already.
async fn held_external_ids_on<DB: Dialect>(
    conn: &mut DB::Connection, tenant: &Tenant, keys: &[StoredKey],
) -> Result<HashSet<String>> {
    let wanted: Vec<&str> = keys.iter().filter_map(|stored| stored.key.external_id()).collect();
    let mut held = HashSet::new();
    for chunk in wanted.chunks(1000) {
        let mut qb = Sql::<DB>::new(format!(
            "SELECT {id} AS external_id FROM keysmith_keys WHERE {exact} IN (",
            id = DB::EXTERNAL_ID,
            exact = DB::EXTERNAL_ID_EXACT
        ));
        let mut list = qb.separated(", ");
        for id in chunk {
            list.push_arg(*id);
        }
        qb.push(")");
        push_tenant::<DB>(&mut qb, "", tenant);
        let (sql, args) = qb.finish()?;
        for row in
            sqlx::query_with::<DB, _>(&sql, args).persistent(false).fetch_all(conn.exec()).await.map_err(store_error)?
        {
            held.insert(DB::text(&row, "external_id")?);
        }
    }
    Ok(held)
}

/// The body of `import_keys`, inside the caller's transaction: a
/// few statements per batch, not per key, each planned for its
/// values (not prepared: a generic plan of a long `IN` list reads
/// every key of the tenant). Which hashes are held
/// is asked once; the owners' live keys under each policy with a
/// limit are counted once (the policy row locked until commit, as
/// a single creation does); the keys and their scopes then go in
/// by multi-row `INSERT`s.
pub(super) async fn import_keys_on<DB: Dialect>(
    conn: &mut DB::Connection, tenant: &Tenant, keys: &[StoredKey],
) -> Result<Vec<ImportOutcome>> {
    if keys.iter().any(|stored| stored.key.tenant != *tenant) {
        return Err(Error::InvalidInput {
            field: "tenant",
            reason: "an imported key belongs to another tenant than the import".to_owned(),
        });
    }
    let mut held = held_hashes_on::<DB>(conn, tenant, keys).await?;
    let mut held_ids = held_external_ids_on::<DB>(conn, tenant, keys).await?;
    let mut live = live_owner_keys_on::<DB>(conn, tenant, keys).await?;
    let mut outcomes = Vec::with_capacity(keys.len());
    let mut inserts = Vec::with_capacity(keys.len());
    for stored in keys {
        let key = &stored.key;
        let hash = stored.hash.to_hex();
        let outcome = match held.get(&hash) {
            Some(true) => ImportOutcome::AlreadyImported,
            Some(false) => ImportOutcome::HashTaken,
            None if key.external_id().is_some_and(|id| held_ids.contains(id)) => ImportOutcome::AlreadyImported,
            None => {
                let counted = match (&key.owner_id, key.policy_id) {
                    (Some(owner), Some(policy)) if key.state.counts_toward_owner_limit() => {
                        live.get_mut(&policy).map(|(limit, owners)| (*limit, owners.entry(owner.clone()).or_default()))
                    }
                    _ => None,
                };
                match counted {
                    Some((limit, held_by_owner)) if *held_by_owner >= i64::from(limit) => {
                        ImportOutcome::OwnerKeyLimit { limit }
                    }
                    counted => {
                        if let Some((_, held_by_owner)) = counted {
                            *held_by_owner += 1;
                        }
                        // A second row of the same hash, or of the
                        // same source id, is the same key.
                        held.insert(hash, true);
                        held_ids.extend(key.external_id().map(str::to_owned));
                        inserts.push(stored);
                        ImportOutcome::Imported
                    }
                }
            }
        };
        outcomes.push(outcome);
    }
    insert_keys_on::<DB>(conn, &inserts).await?;
    Ok(outcomes)
}

/// For each policy of `keys` that limits keys per owner: its
/// limit, and how many live keys each of the keys' owners holds
/// under it. The policy rows stay locked until commit.
async fn live_owner_keys_on<DB: Dialect>(
    conn: &mut DB::Connection, tenant: &Tenant, keys: &[StoredKey],
) -> Result<HashMap<PolicyId, (u32, HashMap<String, i64>)>> {
    let mut owners_by_policy: HashMap<PolicyId, HashSet<&str>> = HashMap::new();
    for stored in keys {
        if let (Some(owner), Some(policy)) = (&stored.key.owner_id, stored.key.policy_id) {
            owners_by_policy.entry(policy).or_default().insert(owner);
        }
    }
    // Live at the import's time: its active keys' `updated_at`.
    let now = keys.iter().map(|stored| stored.key.updated_at).max();
    let mut live = HashMap::new();
    for (policy_id, owners) in owners_by_policy {
        let row = sqlx::query(statement!(
            DB,
            "SELECT max_active_keys_per_owner FROM keysmith_policies \
             WHERE id = ? AND app_id = ? AND tenant_id = ?",
            DB::LOCK_ROWS
        ))
        .bind_scoped(policy_id.uuid(), tenant)
        .fetch_optional(conn.exec())
        .await
        .map_err(store_error)?;
        let Some(limit) = row.map(|row| DB::opt_big(&row, "max_active_keys_per_owner")).transpose()?.flatten() else {
            continue;
        };
        let limit = u32::try_from(limit).map_err(|e| corrupt("policy max_active_keys_per_owner", e))?;
        let owners: Vec<&str> = owners.into_iter().collect();
        let mut counts = HashMap::new();
        for chunk in owners.chunks(1000) {
            let mut qb = Sql::<DB>::new("SELECT owner_id, COUNT(*) AS held FROM keysmith_keys WHERE policy_id = ");
            qb.push_arg(policy_id.uuid());
            push_tenant::<DB>(&mut qb, "", tenant);
            qb.push(" AND state IN ('active', 'suspended') AND (expires_at IS NULL OR expires_at > ");
            qb.push_arg(now.map(DB::time));
            qb.push(") AND owner_id IN (");
            let mut list = qb.separated(", ");
            for owner in chunk {
                list.push_arg(*owner);
            }
            qb.push(") GROUP BY owner_id");
            let (sql, args) = qb.finish()?;
            for row in sqlx::query_with::<DB, _>(&sql, args)
                .persistent(false)
                .fetch_all(conn.exec())
                .await
                .map_err(store_error)?
            {
                counts.insert(DB::text(&row, "owner_id")?, DB::big(&row, "held")?);
            }
        }
        live.insert(policy_id, (limit, counts));
    }
    Ok(live)
}

/// Inserts new keys (of new lineages, without credits) and their
/// scopes by multi-row statements, inside the caller's transaction.
async fn insert_keys_on<DB: Dialect>(conn: &mut DB::Connection, keys: &[&StoredKey]) -> Result<()> {
    // 19 values a key, within the backend's limit on bound values.
    for chunk in keys.chunks(DB::ROWS_PER_INSERT * 11 / 19) {
        let mut qb = Sql::<DB>::new(
            "INSERT INTO keysmith_keys (id, app_id, tenant_id, hash, name, hint, prefix, environment, \
             state, policy_id, expires_at, grace_expires_at, revoked_reason, last_used_at, created_at, \
             updated_at, metadata, lineage_id, owner_id) ",
        );
        qb.push_values(chunk, |mut row, stored| {
            let key = &*stored.key;
            row.push_arg(key.id.uuid())
                .push_arg(key.tenant.app_id.clone())
                .push_arg(key.tenant.tenant_id.clone())
                .push_arg(stored.hash.to_hex())
                .push_arg(key.name.clone())
                .push_arg(key.hint.clone())
                .push_arg(key.prefix.clone())
                .push_arg(key.environment.as_str())
                .push_arg(key.state.as_str())
                .push_arg(key.policy_id.map(|id| id.uuid()))
                .push_arg(key.expires_at.map(DB::time))
                .push_arg(key.grace_expires_at.map(DB::time))
                .push_arg(key.revoked_reason.clone())
                .push_arg(key.last_used_at.map(DB::time))
                .push_arg(DB::time(key.created_at))
                .push_arg(DB::time(key.updated_at))
                .push_arg(Json(key.metadata.clone()))
                .push_arg(key.lineage_id.uuid())
                .push_arg(key.owner_id.clone());
        });
        let first = chunk.first().map(|stored| (stored.key.id, stored.key.policy_id));
        let (sql, args) = qb.finish()?;
        if let Err(error) = sqlx::query_with::<DB, _>(&sql, args).persistent(false).execute(conn.exec()).await {
            let (id, policy_id) = first.unwrap_or((KeyId::new(), None));
            return Err(key_insert_error(error, id, policy_id));
        }
    }
    let scopes: Vec<(KeyId, i32, &String)> = keys
        .iter()
        .flat_map(|stored| stored.key.scopes.iter().zip(0..).map(|(scope, position)| (stored.key.id, position, scope)))
        .collect();
    for chunk in scopes.chunks(DB::ROWS_PER_INSERT) {
        let mut qb = Sql::<DB>::new("INSERT INTO keysmith_key_scopes (key_id, position, scope) ");
        qb.push_values(chunk, |mut row, (id, position, scope)| {
            row.push_arg(id.uuid()).push_arg(*position).push_arg((*scope).clone());
        });
        let (sql, args) = qb.finish()?;
        sqlx::query_with::<DB, _>(&sql, args).persistent(false).execute(conn.exec()).await.map_err(store_error)?;
    }
    Ok(())
}
