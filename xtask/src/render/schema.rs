//! Validation of a compose document against the compose specification's JSON schema (draft
//! 2020-12), committed under `deploy/schema/` so a clean clone validates offline. It checks
//! shape only; references between parts of the file are `crosscheck`'s job.

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

/// The compose specification's schema, as committed.
pub const COMPOSE_SCHEMA: &str = include_str!("../../../deploy/schema/compose-spec.json");

/// Fails listing every place where `document` breaks the compose schema.
pub fn validate(document: &Value) -> Result<()> {
    let schema: Value = serde_json::from_str(COMPOSE_SCHEMA)
        .map_err(|err| anyhow!("deploy/schema/compose-spec.json is not JSON: {err}"))?;
    let validator = jsonschema::validator_for(&schema)
        .map_err(|err| anyhow!("deploy/schema/compose-spec.json is not a valid schema: {err}"))?;
    let problems: Vec<String> = validator
        .iter_errors(document)
        .map(|err| format!("at {}: {err}", err.instance_path()))
        .collect();
    if !problems.is_empty() {
        bail!(
            "does not match the compose schema:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}
