//! What several instances sharing one PostgreSQL ledger agree on through it:
//! who is alive (a row each, renewed every second), who leads (a session
//! advisory lock, released by the server the moment the leader's connection
//! goes, whether it exited or was killed), whose claims and imports still
//! hold (leases renewed with the heartbeat), and the account's send slots (one
//! grid, handed out in small batches).

use tokio_postgres::NoTls;

use super::{LEASE_MS, Pg};
use crate::store::{InstanceRow, Result};

/// Renews this instance's row: alive, leading or not, listening where.
pub(crate) async fn announce(pg: &Pg, address: Option<&str>, leader: bool, now: i64) -> Result<()> {
    let client = pg.client().await?;
    client
        .execute(
            "INSERT INTO instances (name, started_at, seen_at, leader, address) VALUES ($1, $2, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET seen_at = $2, leader = $3, address = $4",
            &[&pg.instance, &now, &leader, &address],
        )
        .await?;
    Ok(())
}

/// Renews the leases of jobs `ids` (claims whose creates are still out)
/// while they are this instance's.
///
/// A job whose row is locked is skipped, not waited for: the lock is its
/// outcome being written (it needs no lease after that), and waiting for it
/// while holding the locks of the others deadlocked against that write,
/// which locks the same rows in another order.
pub(crate) async fn renew_leases(pg: &Pg, ids: &[i64], now: i64) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let client = pg.client().await?;
    client
        .execute(
            "UPDATE jobs SET lease_until = $3 WHERE id IN ( \
                 SELECT id FROM jobs WHERE id = ANY($1) AND lease_owner = $2 AND state = 'dispatching' \
                 ORDER BY id FOR UPDATE SKIP LOCKED)",
            &[&ids, &pg.instance, &(now + LEASE_MS)],
        )
        .await?;
    Ok(())
}

/// Renews the leases of the imports this instance is running (a process
/// that stops renewing has stopped importing: another resumes its imports).
pub(crate) async fn renew_import_leases(pg: &Pg, now: i64) -> Result<()> {
    let client = pg.client().await?;
    client
        .execute(
            "UPDATE runs SET import_lease_until = $2 WHERE import_owner = $1 AND state = 'expanding'",
            &[&pg.instance, &(now + LEASE_MS)],
        )
        .await?;
    Ok(())
}

/// Instances seen within the lease time, by name, with the campaigns whose
/// file differs from the version the leader published.
pub(crate) async fn instances(pg: &Pg, now: i64) -> Result<Vec<InstanceRow>> {
    let client = pg.client().await?;
    let rows = client
        .query(
            "SELECT i.name, i.leader, i.seen_at, i.started_at, i.address, \
                    COALESCE(array_agg(ic.campaign ORDER BY ic.campaign) \
                             FILTER (WHERE c.name IS NOT NULL AND c.removed_at IS NULL \
                                     AND ic.content_hash <> c.content_hash), '{}') \
             FROM instances i \
             LEFT JOIN instance_campaigns ic ON ic.instance = i.name \
             LEFT JOIN campaigns c ON c.name = ic.campaign \
             WHERE i.seen_at > $1 \
             GROUP BY i.name ORDER BY i.name",
            &[&(now - LEASE_MS)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| InstanceRow {
            name: r.get(0),
            leader: r.get(1),
            seen_at: r.get(2),
            started_at: r.get(3),
            address: r.get(4),
            differs: r.get(5),
            this: r.get::<_, String>(0) == pg.instance,
        })
        .collect())
}

/// Records what this instance's own folder holds: campaign name → content
/// hash (a campaign no longer there is forgotten).
pub(crate) async fn record_folder(pg: &Pg, campaigns: &[(String, String)], now: i64) -> Result<()> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    tx.execute("DELETE FROM instance_campaigns WHERE instance = $1", &[&pg.instance]).await?;
    let (names, hashes): (Vec<&str>, Vec<&str>) = campaigns.iter().map(|(n, h)| (n.as_str(), h.as_str())).unzip();
    tx.execute(
        "INSERT INTO instance_campaigns (instance, campaign, content_hash, seen_at) \
         SELECT $1, n, h, $4 FROM UNNEST($2::text[], $3::text[]) AS t(n, h)",
        &[&pg.instance, &names, &hashes, &now],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Takes (or keeps) the import of run `id`: `true` when this instance is to
/// run it — nobody holds it, this instance already does, or the holder's
/// lease ran out (it died; its committed batches stay, and the import resumes
/// at the last line they covered).
pub(crate) async fn claim_import(pg: &Pg, id: i64, now: i64) -> Result<bool> {
    let client = pg.client().await?;
    let n = client
        .execute(
            "UPDATE runs SET import_owner = $2, import_lease_until = $3 \
             WHERE id = $1 AND state = 'expanding' \
               AND (import_owner IS NULL OR import_owner = $2 OR import_lease_until < $4)",
            &[&id, &pg.instance, &(now + LEASE_MS), &now],
        )
        .await?;
    Ok(n == 1)
}

/// Reserves `n` slots `period_us` apart on the grid `key`, after every slot
/// handed out so far and not before the server's now. Returns the first slot
/// and the server's now, both in microseconds of the server's clock: every
/// instance reads the one clock, so their slots never overlap whatever their
/// own clocks say.
pub(crate) async fn reserve_slots(pg: &Pg, key: &str, n: i64, period_us: i64) -> Result<(i64, i64)> {
    let client = pg.client().await?;
    let row = client
        .query_one(
            "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT AS us), \
                  span AS (SELECT $2::BIGINT * $3::BIGINT AS us) \
             INSERT INTO rate_grid AS g (key, next_us) SELECT $1, now.us + span.us FROM now, span \
             ON CONFLICT (key) DO UPDATE \
               SET next_us = GREATEST(g.next_us, (SELECT us FROM now)) + (SELECT us FROM span) \
             RETURNING g.next_us - (SELECT us FROM span), (SELECT us FROM now)",
            &[&key, &n, &period_us],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The leader's role: a session-level advisory lock on a connection of its
/// own (outside the pool), so that the server lets go of it as soon as this
/// process is gone.
#[derive(Default)]
pub(crate) struct Leadership {
    held: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Leadership {
    /// Whether this instance leads now: keeps the role while its connection
    /// answers, tries to take it when free. An error means "not leading".
    pub(crate) async fn try_lead(&self, url: &str) -> Result<bool> {
        let mut held = self.held.lock().await;
        if let Some(client) = held.as_ref() {
            // Bounded: a server gone silent must not keep a leader believing.
            let alive = tokio::time::timeout(std::time::Duration::from_secs(2), client.simple_query("SELECT 1")).await;
            if matches!(alive, Ok(Ok(_))) {
                return Ok(true);
            }
            // The connection is gone, and with it the lock: another instance
            // may lead already.
            *held = None;
        }
        let mut config: tokio_postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "the leader's ledger connection ended");
            }
        });
        let row = client
            .query_one("SELECT pg_try_advisory_lock(hashtext('flowcast leader ' || current_schema()))", &[])
            .await?;
        if row.get::<_, bool>(0) {
            *held = Some(client);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Lets go of the role (shutting down): another instance takes it at once.
    pub(crate) async fn resign(&self) {
        self.held.lock().await.take();
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Ledger, Store};

    async fn store(label: &str) -> Option<(Store, String)> {
        let url = super::super::test_ledger(label).await?;
        Some((Store::open(&Ledger::parse(&url).unwrap()).await.unwrap(), url))
    }

    #[tokio::test]
    async fn slots_reserved_by_several_instances_at_once_never_overlap_and_keep_the_period() {
        let Some((first, url)) = store("grid").await else { return };
        let second = Store::open(&Ledger::parse(&url).unwrap()).await.unwrap();
        let period = 10_000; // 100/s, in microseconds
        let mut tasks = Vec::new();
        for s in [first, second] {
            tasks.push(tokio::spawn(async move {
                let mut starts = Vec::new();
                for _ in 0..50 {
                    let (start, _) = s.reserve_slots("account", 5, period).await.unwrap().unwrap();
                    starts.extend((0..5).map(|i| start + i * period));
                }
                starts
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        assert_eq!(all.len(), 500);
        assert!(all.windows(2).all(|w| w[1] - w[0] >= period), "two slots closer than a period");
    }

    #[tokio::test]
    async fn an_import_held_by_a_live_instance_is_not_taken_until_its_lease_runs_out() {
        let Some((store, url)) = store("imports").await else { return };
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(
                "INSERT INTO runs (campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, from_addr, \
                 on_conflict, state, created_at, import_owner, import_lease_until) \
                 VALUES ('c', 'reminder', 'manual', 'k', 0, 'c.toml', 'FW', '+1', 'skip', 'expanding', 0, 'other', 10000)",
            )
            .await
            .unwrap();
        assert!(!store.claim_import(1, 9_000).await.unwrap(), "the other instance's lease holds");
        assert!(store.claim_import(1, 10_001).await.unwrap(), "its lease ran out: taken over");
        assert!(store.claim_import(1, 10_002).await.unwrap(), "and kept by the new holder");
        client.batch_execute("UPDATE runs SET state = 'active'").await.unwrap();
        assert!(!store.claim_import(1, 20_000).await.unwrap(), "an imported run has nothing to take");
    }

    #[tokio::test]
    async fn renewing_leases_never_waits_for_a_job_whose_outcome_is_being_written() {
        let Some((store, url)) = store("renew").await else { return };
        let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let owner = store.instance().expect("a shared ledger names its instance").to_string();
        client
            .batch_execute(
                "INSERT INTO runs (campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, from_addr, \
                 on_conflict, state, created_at) \
                 VALUES ('c', 'reminder', 'manual', 'k', 0, 'c.toml', 'FW', '+1', 'skip', 'active', 0)",
            )
            .await
            .unwrap();
        for id in [1_i64, 2] {
            client
                .execute(
                    "INSERT INTO jobs (id, run_id, line, phone, zone, parameters, state, due_at, created_at, updated_at, \
                     lease_owner, lease_until) VALUES ($1, 1, $1, $3, 'UTC', '{}', 'dispatching', 0, 0, 0, $2, 10)",
                    &[&id, &owner, &format!("+1500555000{id}")],
                )
                .await
                .unwrap();
        }
        // Job 1's outcome is being written (its row locked, not committed).
        let writing = client.transaction().await.unwrap();
        writing.execute("UPDATE jobs SET updated_at = 1 WHERE id = 1", &[]).await.unwrap();
        let renewed = tokio::time::timeout(std::time::Duration::from_secs(5), store.renew_leases(vec![2, 1], 1_000));
        renewed.await.expect("the renewal waited on the locked row").unwrap();
        writing.rollback().await.unwrap();
        let leases: Vec<(i64, Option<i64>)> = client
            .query("SELECT id, lease_until FROM jobs ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(leases, vec![(1, Some(10)), (2, Some(1_000 + super::LEASE_MS))], "only the free job renewed");
    }
}
