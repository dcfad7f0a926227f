//! Config files with environment overrides, read the same way by both planes.
//!
//! Stage one of loading a config: the file's YAML (or JSON; an empty file is an empty map)
//! with every `SWITCHBOARD__A__B=value` variable layered on top — `SWITCHBOARD__SERVER__LISTEN`
//! sets `server.listen`, at any depth, values read as YAML scalars (so numbers and booleans
//! keep their types) — then deserialised into the caller's type, which denies unknown fields.
//! Stage two, checking values and resolving secrets, belongs to each plane's config.

use serde::de::DeserializeOwned;

/// The prefix of override variables.
pub const ENV_PREFIX: &str = "SWITCHBOARD__";

/// Parses `text`, applies the overrides found in `env` and deserialises the result.
///
/// Without overrides the text is deserialised directly: a YAML tree of a standalone snapshot
/// with 100,000 keys is several times the size of the snapshot itself. A text that does not
/// deserialise so takes the tree's way too, so that errors read as they always did.
pub fn parse<T: DeserializeOwned>(text: &str, env: &[(String, String)]) -> Result<T, String> {
    let overridden = env.iter().any(|(name, _)| name.starts_with(ENV_PREFIX));
    if !overridden
        && !text.trim().is_empty()
        && let Ok(parsed) = serde_yaml_ng::from_str(text)
    {
        return Ok(parsed);
    }
    let mut tree: serde_yaml_ng::Value = if text.trim().is_empty() {
        serde_yaml_ng::Value::Null
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?
    };
    for (name, value) in env {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(value)
            .unwrap_or_else(|_| serde_yaml_ng::Value::String(value.clone()));
        set_path(&mut tree, &keys, parsed).map_err(|e| format!("{name}: {e}"))?;
    }
    serde_yaml_ng::from_value(tree).map_err(|e| e.to_string())
}

/// The process environment as pairs, for [`parse`].
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars().collect()
}

/// Sets `keys` (a path of map keys) in a YAML tree, creating maps on the way.
fn set_path(
    tree: &mut serde_yaml_ng::Value,
    keys: &[String],
    value: serde_yaml_ng::Value,
) -> Result<(), String> {
    let Some((first, rest)) = keys.split_first() else {
        *tree = value;
        return Ok(());
    };
    if tree.is_null() {
        *tree = serde_yaml_ng::Value::Mapping(serde_yaml_ng::Mapping::new());
    }
    let serde_yaml_ng::Value::Mapping(map) = tree else {
        return Err(format!(
            "cannot set `{first}` inside a value that is not a map"
        ));
    };
    let key = serde_yaml_ng::Value::String(first.clone());
    let slot = map.entry(key).or_insert(serde_yaml_ng::Value::Null);
    set_path(slot, rest, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        server: Server,
    }
    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Server {
        port: u16,
        #[serde(default)]
        name: String,
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_layer_over_the_file_with_typed_values() {
        let doc: Doc = parse(
            "server: { port: 1 }",
            &env(&[("SWITCHBOARD__SERVER__PORT", "8080"), ("OTHER", "x")]),
        )
        .unwrap();
        assert_eq!(doc.server.port, 8080);
        // An empty file plus overrides is a whole config.
        let doc: Doc = parse(
            "",
            &env(&[
                ("SWITCHBOARD__SERVER__PORT", "2"),
                ("SWITCHBOARD__SERVER__NAME", "a b"),
            ]),
        )
        .unwrap();
        assert_eq!(
            doc.server,
            Server {
                port: 2,
                name: "a b".into()
            }
        );
    }

    #[test]
    fn a_file_reads_the_same_with_or_without_the_tree() {
        let text = "server:\n  port: 7\n  name: \"a: b\"\n";
        let direct: Doc = parse(text, &[]).unwrap();
        let through_tree: Doc = parse(text, &env(&[("SWITCHBOARD__SERVER__PORT", "7")])).unwrap();
        assert_eq!(direct, through_tree);
        // A bad file fails with the tree's message either way.
        assert_eq!(
            parse::<Doc>("server: { port: x }", &[]).unwrap_err(),
            parse::<Doc>(
                "server: { port: x }",
                &env(&[("SWITCHBOARD__SERVER__NAME", "n")])
            )
            .unwrap_err()
        );
    }

    #[test]
    fn bad_overrides_and_unknown_fields_are_errors() {
        let err =
            parse::<Doc>("server: 3", &env(&[("SWITCHBOARD__SERVER__PORT", "1")])).unwrap_err();
        assert!(err.contains("SWITCHBOARD__SERVER__PORT"), "{err}");
        let err = parse::<Doc>("server: { port: 1, typo: 2 }", &[]).unwrap_err();
        assert!(err.contains("typo"), "{err}");
        assert!(
            parse::<Doc>("server: [", &[])
                .unwrap_err()
                .contains("invalid YAML")
        );
    }
}
