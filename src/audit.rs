//! `AuditLog`: the only owner of `audit_log` (who did what through the API, from which build).

use serde_json::Value;

use crate::db::Tx;
use crate::queue::Actor;

/// One API action to record.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub actor: &'a Actor,
    pub action: &'a str,
    pub job_id: Option<i64>,
    pub bu_id: Option<&'a str>,
    pub connector: Option<&'a str>,
    pub detail: Value,
}

#[derive(Debug, Clone, Default)]
pub struct AuditLog;

impl AuditLog {
    /// Records `e` in the caller's transaction, so the action and its audit row commit
    /// together or not at all.
    pub async fn record_in(&self, tx: &mut Tx, e: &AuditEntry<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO audit_log (actor, source, action, job_id, bu_id, connector, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&e.actor.id)
        .bind(&e.actor.version)
        .bind(e.action)
        .bind(e.job_id)
        .bind(e.bu_id)
        .bind(e.connector)
        .bind(&e.detail)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Records many entries of one actor and action in one statement, in the caller's
    /// transaction (a source's listing enqueues a page of jobs at once).
    pub async fn record_many_in(
        &self,
        tx: &mut Tx,
        actor: &Actor,
        action: &str,
        rows: &[(i64, &str, &str, Value)],
    ) -> Result<(), sqlx::Error> {
        let jobs: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let bus: Vec<&str> = rows.iter().map(|r| r.1).collect();
        let connectors: Vec<&str> = rows.iter().map(|r| r.2).collect();
        let details: Vec<String> = rows.iter().map(|r| r.3.to_string()).collect();
        sqlx::query(
            "INSERT INTO audit_log (actor, source, action, job_id, bu_id, connector, detail)
             SELECT $1, $2, $3, j, b, c, d::jsonb
               FROM unnest($4::int8[], $5::text[], $6::text[], $7::text[]) AS t(j, b, c, d)",
        )
        .bind(&actor.id)
        .bind(&actor.version)
        .bind(action)
        .bind(&jobs)
        .bind(&bus)
        .bind(&connectors)
        .bind(&details)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}
