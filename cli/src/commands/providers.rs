//! `stowage providers`: every registered provider, its origin, its capabilities and (with
//! `--json`) the JSON Schema of its config.

use stowage_core::{Capabilities, Registry, Result};

use crate::context::Context;

/// Arguments of `stowage providers` (none besides the global ones).
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Lists the providers of the global registry: the built-ins plus the plugins named by the
/// config that applies (its `[plugins]` section is loaded; its `[storage]` is not opened).
pub async fn run(ctx: &Context, _args: Args) -> Result<()> {
    let registry = Registry::global();
    let config = ctx.load_config()?;
    stowage_core::load_plugins(&registry, &config.plugins)?;
    let factories = registry.factories();
    for factory in &factories {
        let caps = factory.capabilities();
        if ctx.out.is_json() {
            ctx.out.json_line(&serde_json::json!({
                "name": factory.name(),
                "description": factory.description(),
                "origin": factory.origin().to_string(),
                "capabilities": caps,
                "config_schema": factory.config_schema(),
            }))?;
        } else {
            ctx.out.data(&format!(
                "{}  ({})  {}\n    capabilities: {}",
                factory.name(),
                factory.origin(),
                factory.description(),
                capability_names(&caps).join(", ")
            ))?;
        }
    }
    if factories.is_empty() {
        ctx.out
            .hint("no providers are registered in this build of stowage");
    }
    Ok(())
}

/// The names of the capabilities that are on, as in the JSON form.
pub(crate) fn capability_names(caps: &Capabilities) -> Vec<String> {
    match serde_json::to_value(caps) {
        Ok(serde_json::Value::Object(map)) => {
            let on: Vec<String> = map
                .into_iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k)
                .collect();
            if on.is_empty() {
                vec!["(none beyond put/get/head/list)".to_string()]
            } else {
                on
            }
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_capabilities_that_are_on_are_named() {
        let caps = Capabilities {
            versions: true,
            gc: true,
            ..Capabilities::default()
        };
        let names = capability_names(&caps);
        assert!(names.contains(&"versions".to_string()));
        assert!(names.contains(&"gc".to_string()));
        assert!(!names.contains(&"search".to_string()));
        assert_eq!(names.len(), 2);
    }
}
