//! The SQL engines: MySQL/MariaDB and PostgreSQL, the seed's backends.
//!
//! One implementation over sqlx's `Any` driver; the dialects differ only in
//! the SQL text (placeholders, column types, upserts, advisory locks).
//! Tables, named from the configured `table` (default `ripple_kv`):
//! - `{table}`: one row per key: `k` (binary key), `seq`, `version_ts`,
//!   `version_node`, `tombstone`, `content_type`, `v` (binary value); the
//!   change feed is this table ordered by `seq` (unique, indexed);
//! - `{table}_meta`: `last_seq`, `max_version_ts`, `feed_id`;
//! - `{table}_cursors`: replication cursors;
//! - `{table}_migrations`: the schema versions applied.
//!
//! Writes go through the same single writer as the embedded engine
//! (`writer`), so seqs are taken and committed in order; each group is one
//! database transaction, which also locks the `last_seq` row, so a second
//! process on the same tables cannot interleave. Durability is the
//! database's commit. Connection failures are `Unavailable` (HTTP 503); the
//! pool reconnects by itself when the database is back.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tokio::task::JoinHandle;

use super::writer::{self, Purge, Queue, Work, Writer};
use super::{Applied, Batch, Entry, Record, Result, Storage, StorageError};
use crate::node::version::Version;

/// Which SQL dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Postgres,
}

/// Longest key the MySQL schema can index (InnoDB's limit for one column).
pub const MYSQL_MAX_KEY_BYTES: usize = 3072;

/// How long a request waits for a pooled connection before a 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The SQL text of every statement, for one dialect and table name.
struct Sql {
    get: String,
    get_header: String,
    insert: String,
    update: String,
    list: String,
    list_bounded: String,
    changes: String,
    meta_get: String,
    meta_lock: String,
    meta_set: String,
    cursor_get: String,
    cursor_set: String,
    tombstones_oldest: String,
    tombstone_count: String,
    delete_row: String,
    /// The schema, one list of statements per version.
    migrations: Vec<Vec<String>>,
    lock: String,
    unlock: String,
}

impl Sql {
    fn new(d: Dialect, t: &str) -> Sql {
        // Placeholders: `?` for MySQL, `$n` for PostgreSQL.
        let p = |n: usize| match d {
            Dialect::MySql => "?".to_owned(),
            Dialect::Postgres => format!("${n}"),
        };
        let (bin_key, bin, blob) = match d {
            Dialect::MySql => ("VARBINARY(3072)", "VARBINARY(1024)", "LONGBLOB"),
            Dialect::Postgres => ("BYTEA", "BYTEA", "BYTEA"),
        };
        let cols = "seq, version_ts, version_node, tombstone, content_type, v";
        let mut schema = vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    k {bin_key} NOT NULL PRIMARY KEY,
                    seq BIGINT NOT NULL UNIQUE,
                    version_ts BIGINT NOT NULL,
                    version_node {bin} NOT NULL,
                    tombstone BIGINT NOT NULL,
                    content_type {bin} NOT NULL,
                    v {blob} NOT NULL{}
                )",
                match d {
                    Dialect::MySql => format!(",\n INDEX {t}_tombstones (tombstone, seq)"),
                    Dialect::Postgres => String::new(),
                }
            ),
            format!("CREATE TABLE IF NOT EXISTS {t}_meta (name VARCHAR(64) NOT NULL PRIMARY KEY, value BIGINT NOT NULL)"),
            format!("CREATE TABLE IF NOT EXISTS {t}_cursors (peer VARCHAR(255) NOT NULL PRIMARY KEY, seq BIGINT NOT NULL)"),
        ];
        if d == Dialect::Postgres {
            schema.push(format!(
                "CREATE INDEX IF NOT EXISTS {t}_tombstones ON {t} (tombstone, seq)"
            ));
        }
        let insert_meta = |name: &str, value: &str| match d {
            Dialect::MySql => {
                format!("INSERT IGNORE INTO {t}_meta (name, value) VALUES ('{name}', {value})")
            }
            Dialect::Postgres => {
                format!("INSERT INTO {t}_meta (name, value) VALUES ('{name}', {value}) ON CONFLICT (name) DO NOTHING")
            }
        };
        schema.push(insert_meta("last_seq", "0"));
        schema.push(insert_meta("max_version_ts", "0"));
        schema.push(insert_meta(
            "feed_id",
            &(super::random_feed_id() as i64).to_string(),
        ));
        Sql {
            get: format!("SELECT {cols} FROM {t} WHERE k = {}", p(1)),
            get_header: format!("SELECT seq, version_ts, version_node FROM {t} WHERE k = {}", p(1)),
            insert: format!(
                "INSERT INTO {t} (k, {cols}) VALUES ({}, {}, {}, {}, {}, {}, {})",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7)
            ),
            update: format!(
                "UPDATE {t} SET seq = {}, version_ts = {}, version_node = {}, tombstone = {}, content_type = {}, v = {} WHERE k = {}",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7)
            ),
            list: format!(
                "SELECT k FROM {t} WHERE k >= {} AND tombstone = 0 ORDER BY k LIMIT {}",
                p(1),
                p(2)
            ),
            list_bounded: format!(
                "SELECT k FROM {t} WHERE k >= {} AND k < {} AND tombstone = 0 ORDER BY k LIMIT {}",
                p(1),
                p(2),
                p(3)
            ),
            changes: format!("SELECT k, {cols} FROM {t} WHERE seq > {} ORDER BY seq LIMIT {}", p(1), p(2)),
            meta_get: format!("SELECT value FROM {t}_meta WHERE name = {}", p(1)),
            meta_lock: format!("SELECT value FROM {t}_meta WHERE name = 'last_seq' FOR UPDATE"),
            meta_set: format!("UPDATE {t}_meta SET value = {} WHERE name = {}", p(1), p(2)),
            cursor_get: format!("SELECT seq FROM {t}_cursors WHERE peer = {}", p(1)),
            cursor_set: match d {
                Dialect::MySql => format!(
                    "INSERT INTO {t}_cursors (peer, seq) VALUES (?, ?) ON DUPLICATE KEY UPDATE seq = VALUES(seq)"
                ),
                Dialect::Postgres => format!(
                    "INSERT INTO {t}_cursors (peer, seq) VALUES ($1, $2) ON CONFLICT (peer) DO UPDATE SET seq = EXCLUDED.seq"
                ),
            },
            tombstones_oldest: format!(
                "SELECT k, seq, version_ts FROM {t} WHERE tombstone = 1 AND seq <= {} AND version_ts < {} ORDER BY seq LIMIT {}",
                p(1),
                p(2),
                p(3)
            ),
            tombstone_count: format!("SELECT COUNT(*) FROM {t} WHERE tombstone = 1"),
            delete_row: format!("DELETE FROM {t} WHERE k = {} AND seq = {}", p(1), p(2)),
            migrations: vec![schema],
            lock: match d {
                Dialect::MySql => format!("SELECT GET_LOCK('ripple_migrate_{t}', 60)"),
                Dialect::Postgres => format!("SELECT pg_advisory_lock(hashtext('ripple_migrate_{t}'))"),
            },
            unlock: match d {
                Dialect::MySql => format!("SELECT RELEASE_LOCK('ripple_migrate_{t}')"),
                Dialect::Postgres => format!("SELECT pg_advisory_unlock(hashtext('ripple_migrate_{t}'))"),
            },
        }
    }
}

/// Marks our SQL text as audited: it is built from constants and a table
/// name that config validation restricts to `[A-Za-z_][A-Za-z0-9_]*`;
/// every value goes in as a bound parameter.
fn safe(sql: &str) -> AssertSqlSafe<&str> {
    AssertSqlSafe(sql)
}

/// A SQL engine.
pub struct SqlEngine {
    pool: AnyPool,
    sql: std::sync::Arc<Sql>,
    writer: Writer,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Maps a driver error: connection trouble is `Unavailable` (retry later).
fn db_err(e: sqlx::Error) -> StorageError {
    match e {
        sqlx::Error::Database(e) => StorageError::Other(format!("database error: {e}")),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StorageError::Corrupt(e.to_string()),
        e => StorageError::Unavailable(format!("the database cannot be reached: {e}")),
    }
}

impl SqlEngine {
    /// Connects to `url` and brings the schema up to date. While the
    /// database cannot be reached it retries, with back-off, for `patience`.
    pub async fn open(
        dialect: Dialect,
        url: &str,
        table: &str,
        pool_size: u32,
        patience: Duration,
    ) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy(url)
            .map_err(|e| StorageError::Other(format!("invalid database URL: {e}")))?;
        let sql = std::sync::Arc::new(Sql::new(dialect, table));
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = Duration::from_millis(100);
        loop {
            match migrate(&pool, &sql, table).await {
                Ok(()) => break,
                Err(StorageError::Unavailable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "database not reachable yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
        let (writer, queue) = writer::queue();
        let task = tokio::spawn(writer_task(pool.clone(), sql.clone(), queue));
        Ok(SqlEngine {
            pool,
            sql,
            writer,
            task: Mutex::new(Some(task)),
        })
    }

    /// Refuses to run when the database cannot take a value of
    /// `max_value_bytes` (MySQL's `max_allowed_packet`), so such a write
    /// fails at start-up rather than on every node that replicates it.
    pub async fn check_value_limit(&self, dialect: Dialect, max_value_bytes: usize) -> Result<()> {
        if dialect != Dialect::MySql {
            return Ok(()); // PostgreSQL takes up to 1 GB in a bytea.
        }
        let packet: i64 = sqlx::query(safe("SELECT CAST(@@max_allowed_packet AS SIGNED)"))
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?
            .try_get(0)
            .map_err(db_err)?;
        // A write's packet holds the value plus its key and the statement.
        let needed = max_value_bytes as i64 + 64 * 1024;
        if packet < needed {
            return Err(StorageError::Other(format!(
                "the database's max_allowed_packet is {packet} bytes, too small for limits.max_value_bytes = {max_value_bytes}: raise max_allowed_packet to at least {needed} (e.g. max_allowed_packet=64M in the server's config) or lower max_value_bytes"
            )));
        }
        Ok(())
    }

    async fn meta(&self, name: &str) -> Result<u64> {
        self.number(&self.sql.meta_get, name).await
    }

    /// The one number `sql` selects for `arg`, 0 when there is no row.
    async fn number(&self, sql: &str, arg: &str) -> Result<u64> {
        let row = sqlx::query(safe(sql))
            .bind(arg)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()
            .map_err(db_err)?
            .unwrap_or(0) as u64)
    }
}

/// Applies the versioned schema under an advisory lock, so nodes starting
/// at once on one server do not race.
async fn migrate(pool: &AnyPool, sql: &Sql, table: &str) -> Result<()> {
    let mut conn = pool.acquire().await.map_err(db_err)?;
    sqlx::query(safe(&sql.lock))
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    let result = async {
        sqlx::query(safe(&format!(
            "CREATE TABLE IF NOT EXISTS {table}_migrations (version BIGINT NOT NULL PRIMARY KEY)"
        )))
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
        let done: Vec<i64> = sqlx::query(safe(&format!("SELECT version FROM {table}_migrations")))
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(db_err)?;
        for (i, statements) in sql.migrations.iter().enumerate() {
            let version = i as i64 + 1;
            if done.contains(&version) {
                continue;
            }
            for s in statements {
                sqlx::query(safe(s))
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
            }
            sqlx::query(safe(&format!(
                "INSERT INTO {table}_migrations (version) VALUES ({version})"
            )))
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
            tracing::info!(table, version, "schema migrated");
        }
        Ok(())
    }
    .await;
    let _ = sqlx::query(safe(&sql.unlock)).execute(&mut *conn).await;
    result
}

async fn writer_task(pool: AnyPool, sql: std::sync::Arc<Sql>, mut queue: Queue) {
    while let Some(work) = queue.next().await {
        match work {
            Work::Commit(group) => match commit_group(&pool, &sql, &group.batches).await {
                Err(e) if group.should_split(&e) => {
                    for one in group.split() {
                        let result =
                            commit_group(&pool, &sql, std::slice::from_ref(&one.batch)).await;
                        one.answer(result);
                    }
                }
                result => group.answer(result),
            },
            Work::Purge(job) => {
                let result = purge(&pool, &sql, job.purge).await;
                job.answer(result);
            }
        }
    }
}

fn version_of(ts: i64, node: Vec<u8>) -> Result<Version> {
    Ok(Version {
        ts: ts as u64,
        node: String::from_utf8(node)
            .map_err(|_| StorageError::Corrupt("a version's node id is not UTF-8".into()))?,
    })
}

/// Applies batches in order in one transaction, as the embedded engine does.
async fn commit_group(pool: &AnyPool, sql: &Sql, batches: &[Batch]) -> Result<Vec<Vec<Applied>>> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    let last: i64 = sqlx::query(safe(&sql.meta_lock))
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?
        .try_get(0)
        .map_err(db_err)?;
    let mut last_seq = last as u64;
    let mut max_ts = 0u64;
    let mut results = Vec::with_capacity(batches.len());
    for batch in batches {
        let mut applied = Vec::with_capacity(batch.records.len());
        for r in &batch.records {
            let old = sqlx::query(safe(&sql.get_header))
                .bind(r.key.as_bytes())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            let exists = old.is_some();
            if let Some(row) = old {
                let ts: i64 = row.try_get(1).map_err(db_err)?;
                let node: Vec<u8> = row.try_get(2).map_err(db_err)?;
                if version_of(ts, node)? >= r.version {
                    applied.push(Applied::Stale);
                    continue;
                }
            }
            last_seq += 1;
            max_ts = max_ts.max(r.version.ts);
            let q = if exists { &sql.update } else { &sql.insert };
            let query = sqlx::query(safe(q));
            let query = if exists {
                query
            } else {
                query.bind(r.key.as_bytes())
            };
            let query = query
                .bind(last_seq as i64)
                .bind(r.version.ts as i64)
                .bind(r.version.node.as_bytes())
                .bind(r.tombstone as i64)
                .bind(r.content_type.as_bytes())
                .bind(r.value.as_ref());
            let query = if exists {
                query.bind(r.key.as_bytes())
            } else {
                query
            };
            query.execute(&mut *tx).await.map_err(db_err)?;
            applied.push(Applied::Stored { seq: last_seq });
        }
        if let Some(c) = &batch.cursor {
            sqlx::query(safe(&sql.cursor_set))
                .bind(c.peer.as_str())
                .bind(c.seq as i64)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        results.push(applied);
    }
    sqlx::query(safe(&sql.meta_set))
        .bind(last_seq as i64)
        .bind("last_seq")
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    if max_ts > 0 {
        let old: i64 = sqlx::query(safe(&sql.meta_get))
            .bind("max_version_ts")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?
            .try_get(0)
            .map_err(db_err)?;
        if max_ts as i64 > old {
            sqlx::query(safe(&sql.meta_set))
                .bind(max_ts as i64)
                .bind("max_version_ts")
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
    }
    tx.commit().await.map_err(db_err)?;
    Ok(results)
}

async fn purge(pool: &AnyPool, sql: &Sql, p: Purge) -> Result<usize> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    sqlx::query(safe(&sql.meta_lock))
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    let rows = sqlx::query(safe(&sql.tombstones_oldest))
        .bind(p.max_seq.min(i64::MAX as u64) as i64)
        .bind(p.older_than_ts.min(i64::MAX as u64) as i64)
        .bind(p.limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
    let mut purged = 0;
    for row in rows {
        let key: Vec<u8> = row.try_get(0).map_err(db_err)?;
        let seq: i64 = row.try_get(1).map_err(db_err)?;
        let ts: i64 = row.try_get(2).map_err(db_err)?;
        if (ts as u64) < p.older_than_ts {
            sqlx::query(safe(&sql.delete_row))
                .bind(key)
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            purged += 1;
        }
    }
    tx.commit().await.map_err(db_err)?;
    Ok(purged)
}

/// An entry from a row of `seq, version_ts, version_node, tombstone,
/// content_type, v` starting at column `at`.
fn entry(key: String, row: &AnyRow, at: usize) -> Result<Entry> {
    let seq: i64 = row.try_get(at).map_err(db_err)?;
    let ts: i64 = row.try_get(at + 1).map_err(db_err)?;
    let node: Vec<u8> = row.try_get(at + 2).map_err(db_err)?;
    let tombstone: i64 = row.try_get(at + 3).map_err(db_err)?;
    let ct: Vec<u8> = row.try_get(at + 4).map_err(db_err)?;
    let value: Vec<u8> = row.try_get(at + 5).map_err(db_err)?;
    Ok(Entry {
        seq: seq as u64,
        record: Record {
            key,
            value: Bytes::from(value),
            content_type: String::from_utf8(ct)
                .map_err(|_| StorageError::Corrupt("a content type is not UTF-8".into()))?,
            version: version_of(ts, node)?,
            tombstone: tombstone != 0,
        },
    })
}

fn key_of(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| StorageError::Corrupt("a stored key is not UTF-8".into()))
}

/// The smallest byte string above every string that starts with `prefix`,
/// or `None` when there is none (empty, or all 0xFF).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[async_trait]
impl Storage for SqlEngine {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let row = sqlx::query(safe(&self.sql.get))
            .bind(key.as_bytes())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(|r| entry(key.to_owned(), &r, 0)).transpose()
    }

    async fn apply(&self, batch: Batch) -> Result<Vec<Applied>> {
        self.writer.apply(batch).await
    }

    async fn list_keys(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        // Start at the prefix, or just after the cursor when it is past it.
        let (start, skip) = match start_after {
            Some(after) if after >= prefix => (after.as_bytes().to_vec(), Some(after)),
            _ => (prefix.as_bytes().to_vec(), None),
        };
        let fetch = limit + skip.is_some() as usize;
        let rows = match prefix_end(prefix.as_bytes()) {
            Some(end) => {
                sqlx::query(safe(&self.sql.list_bounded))
                    .bind(start)
                    .bind(end)
                    .bind(fetch as i64)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query(safe(&self.sql.list))
                    .bind(start)
                    .bind(fetch as i64)
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(db_err)?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let key = key_of(row.try_get(0).map_err(db_err)?)?;
            if Some(key.as_str()) == skip {
                continue;
            }
            if keys.len() < limit {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    async fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Entry>> {
        let rows = sqlx::query(safe(&self.sql.changes))
            .bind(after.min(i64::MAX as u64) as i64)
            .bind(limit.min(i64::MAX as usize) as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| entry(key_of(r.try_get(0).map_err(db_err)?)?, r, 1))
            .collect()
    }

    async fn feed_id(&self) -> Result<u64> {
        self.meta("feed_id").await
    }

    async fn new_feed_id(&self) -> Result<u64> {
        let id = super::random_feed_id();
        sqlx::query(safe(&self.sql.meta_set))
            .bind(id as i64)
            .bind("feed_id")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(id)
    }

    async fn last_seq(&self) -> Result<u64> {
        self.meta("last_seq").await
    }

    async fn max_version_ts(&self) -> Result<u64> {
        self.meta("max_version_ts").await
    }

    async fn purge_tombstones(
        &self,
        max_seq: u64,
        older_than_ts: u64,
        limit: usize,
    ) -> Result<usize> {
        self.writer
            .purge(Purge {
                max_seq,
                older_than_ts,
                limit,
            })
            .await
    }

    async fn tombstone_count(&self) -> Result<u64> {
        let n: i64 = sqlx::query(safe(&self.sql.tombstone_count))
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?
            .try_get(0)
            .map_err(db_err)?;
        Ok(n as u64)
    }

    async fn cursor(&self, peer: &str) -> Result<u64> {
        self.number(&self.sql.cursor_get, peer).await
    }

    async fn close(&self) -> Result<()> {
        self.writer.close();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.pool.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_string_up() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
