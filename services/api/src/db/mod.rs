//! PostgreSQL: the connection pool and the embedded migrations (applied at start-up and by
//! `api migrate up`, tracked in sqlx's `_sqlx_migrations` table). Each submodule owns the
//! queries of one table; all queries are checked at run time, so building needs no database.
//! Nothing here knows about HTTP.

pub mod files;
pub mod messages;
pub mod sessions;
pub mod users;

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::DatabaseConfig;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Opens the pool; fails when the database cannot be reached within a few seconds. Every
/// connection, the migrations' included, uses [`connect_options`].
pub async fn connect(database: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect_options(database)?)
        .await
}

/// `DATABASE_URL`, with `DATABASE_PASSWORD` (when given) as the password in place of any the
/// URL holds: handed to the driver as it is, so it needs no URL encoding.
pub fn connect_options(database: &DatabaseConfig) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(&database.url)?;
    Ok(match &database.password {
        Some(password) => options.password(password),
        None => options,
    })
}

/// Applies every migration not yet recorded.
pub async fn migrate_up(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// One migration and whether the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationState {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

/// Every embedded migration with its state in the database.
pub async fn migration_status(pool: &PgPool) -> Result<Vec<MigrationState>, sqlx::Error> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    let applied: Vec<i64> = if table_exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .map(|m| MigrationState {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect())
}

/// Readiness: one round trip to the database.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
