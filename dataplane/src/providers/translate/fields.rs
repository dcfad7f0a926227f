//! What each translator does with every OpenAI chat request field: the one table.
//!
//! Why: a field a translation drops without a word is a bug the client cannot see (a
//! `response_format` that is not honoured, `n: 3` answered once and billed once). So every
//! field of OpenAI's chat request is listed here, per translated provider, as translated,
//! refused (a 400 naming the field and the provider — only when its value asks for something;
//! `n: 1` or `logprobs: false` pass), or ignored (documented, with the reason). A field not in
//! the table is refused. [`check`] enforces the table at the start of each translation;
//! `docs/provider-fields.md` shows it ([`markdown`], checked by a test), and the test in this
//! file walks every row against the real translations.

use serde_json::{Map, Value};

use super::TranslateError;

/// A translated provider (the ones whose wire format is not OpenAI's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Anthropic,
    Gemini,
    Bedrock,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Anthropic, Provider::Gemini, Provider::Bedrock];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Anthropic => "Anthropic",
            Provider::Gemini => "Gemini",
            Provider::Bedrock => "Bedrock",
        }
    }
}

/// What one provider's translation does with a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Sent on as this (the provider's field, as a JSON pointer into its request).
    Translated(&'static str),
    /// A 400 when its value asks for something (see [`Field::inert`]).
    Refused,
    /// Accepted and not sent, for this reason.
    Ignored(&'static str),
}

/// One OpenAI chat request field.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    /// A value that asks for something (for the table's test).
    pub sample: &'static str,
    /// Values that ask for nothing: never refused.
    pub inert: fn(&Value) -> bool,
    pub anthropic: Handling,
    pub gemini: Handling,
    pub bedrock: Handling,
}

impl Field {
    pub fn handling(&self, provider: Provider) -> Handling {
        match provider {
            Provider::Anthropic => self.anthropic,
            Provider::Gemini => self.gemini,
            Provider::Bedrock => self.bedrock,
        }
    }
}

fn null(v: &Value) -> bool {
    v.is_null()
}
fn one(v: &Value) -> bool {
    v.is_null() || v.as_u64() == Some(1)
}
fn falsy(v: &Value) -> bool {
    v.is_null() || *v == Value::Bool(false)
}
fn truthy(v: &Value) -> bool {
    v.is_null() || *v == Value::Bool(true)
}
fn zero(v: &Value) -> bool {
    v.is_null() || v.as_f64() == Some(0.0)
}
fn empty(v: &Value) -> bool {
    v.is_null()
        || v.as_object().is_some_and(Map::is_empty)
        || v.as_array().is_some_and(Vec::is_empty)
}
fn text_format(v: &Value) -> bool {
    v.is_null() || v.get("type").and_then(Value::as_str) == Some("text")
}

use Handling::{Ignored, Refused, Translated};

const STORE: Handling = Ignored("OpenAI's stored completions; the gateway keeps none for chat");

/// `max_tokens` (and its newer name `max_completion_tokens`).
const MAX_TOKENS: Field = Field {
    name: "max_tokens",
    sample: "7",
    inert: null,
    anthropic: Translated("/max_tokens"),
    gemini: Translated("/generationConfig/maxOutputTokens"),
    bedrock: Translated("/inferenceConfig/maxTokens"),
};

/// Every OpenAI chat completion request field, per translated provider.
pub const FIELDS: &[Field] = &[
    Field {
        name: "model",
        sample: r#""m""#,
        inert: null,
        anthropic: Translated("/model"),
        gemini: Translated("(URL path)"),
        bedrock: Translated("(URL path)"),
    },
    Field {
        name: "messages",
        sample: r#"[{"role":"user","content":"hi"}]"#,
        inert: null,
        anthropic: Translated("/messages"),
        gemini: Translated("/contents"),
        bedrock: Translated("/messages"),
    },
    MAX_TOKENS,
    Field {
        name: "max_completion_tokens",
        ..MAX_TOKENS
    },
    Field {
        name: "temperature",
        sample: "0.5",
        inert: null,
        anthropic: Translated("/temperature"),
        gemini: Translated("/generationConfig/temperature"),
        bedrock: Translated("/inferenceConfig/temperature"),
    },
    Field {
        name: "top_p",
        sample: "0.5",
        inert: null,
        anthropic: Translated("/top_p"),
        gemini: Translated("/generationConfig/topP"),
        bedrock: Translated("/inferenceConfig/topP"),
    },
    Field {
        name: "stop",
        sample: r#"["END"]"#,
        inert: null,
        anthropic: Translated("/stop_sequences"),
        gemini: Translated("/generationConfig/stopSequences"),
        bedrock: Translated("/inferenceConfig/stopSequences"),
    },
    Field {
        name: "stream",
        sample: "true",
        inert: null,
        anthropic: Translated("/stream"),
        gemini: Translated("(URL path)"),
        bedrock: Translated("(URL path)"),
    },
    Field {
        name: "stream_options",
        sample: r#"{"include_usage":true}"#,
        inert: null,
        anthropic: Ignored("usage is always read from the stream and reported as the client asked"),
        gemini: Ignored("usage is always read from the stream and reported as the client asked"),
        bedrock: Ignored("usage is always read from the stream and reported as the client asked"),
    },
    Field {
        name: "tools",
        sample: r#"[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]"#,
        inert: null,
        anthropic: Translated("/tools"),
        gemini: Translated("/tools"),
        bedrock: Translated("/toolConfig/tools"),
    },
    Field {
        name: "tool_choice",
        sample: r#""required""#,
        inert: null,
        anthropic: Translated("/tool_choice"),
        gemini: Translated("/toolConfig"),
        bedrock: Ignored(
            "sent as toolConfig.toolChoice when tools are given; Converse has no tool choice without tools",
        ),
    },
    Field {
        name: "parallel_tool_calls",
        sample: "false",
        inert: truthy,
        anthropic: Translated("/tool_choice/disable_parallel_tool_use"),
        gemini: Refused,
        bedrock: Refused,
    },
    Field {
        name: "n",
        sample: "3",
        inert: one,
        anthropic: Refused,
        gemini: Refused,
        bedrock: Refused,
    },
    Field {
        name: "response_format",
        sample: r#"{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}}"#,
        inert: text_format,
        anthropic: Refused,
        gemini: Translated("/generationConfig/responseMimeType"),
        bedrock: Refused,
    },
    Field {
        name: "seed",
        sample: "42",
        inert: null,
        anthropic: Ignored("Anthropic has no seed; sampling is not reproducible"),
        gemini: Translated("/generationConfig/seed"),
        bedrock: Ignored("Converse has no seed; sampling is not reproducible"),
    },
    Field {
        name: "logprobs",
        sample: "true",
        inert: falsy,
        anthropic: Refused,
        gemini: Refused,
        bedrock: Refused,
    },
    Field {
        name: "top_logprobs",
        sample: "3",
        inert: null,
        anthropic: Refused,
        gemini: Refused,
        bedrock: Refused,
    },
    Field {
        name: "frequency_penalty",
        sample: "0.5",
        inert: zero,
        anthropic: Refused,
        gemini: Translated("/generationConfig/frequencyPenalty"),
        bedrock: Refused,
    },
    Field {
        name: "presence_penalty",
        sample: "0.5",
        inert: zero,
        anthropic: Refused,
        gemini: Translated("/generationConfig/presencePenalty"),
        bedrock: Refused,
    },
    Field {
        name: "logit_bias",
        sample: r#"{"50256":-100}"#,
        inert: empty,
        anthropic: Refused,
        gemini: Refused,
        bedrock: Refused,
    },
    Field {
        name: "user",
        sample: r#""u1""#,
        inert: null,
        anthropic: Translated("/metadata/user_id"),
        gemini: Ignored("no end-user field; the gateway's usage record carries the key"),
        bedrock: Ignored("no end-user field; the gateway's usage record carries the key"),
    },
    Field {
        name: "metadata",
        sample: r#"{"a":"b"}"#,
        inert: null,
        anthropic: STORE,
        gemini: STORE,
        bedrock: STORE,
    },
    Field {
        name: "store",
        sample: "true",
        inert: null,
        anthropic: STORE,
        gemini: STORE,
        bedrock: STORE,
    },
    Field {
        name: "service_tier",
        sample: r#""auto""#,
        inert: null,
        anthropic: Ignored("OpenAI's processing tiers"),
        gemini: Ignored("OpenAI's processing tiers"),
        bedrock: Ignored("OpenAI's processing tiers"),
    },
    Field {
        name: "reasoning_effort",
        sample: r#""low""#,
        inert: null,
        anthropic: Refused,
        gemini: Refused,
        bedrock: Refused,
    },
    Field {
        name: "modalities",
        sample: r#"["text","audio"]"#,
        inert: null,
        anthropic: Refused,
        gemini: Refused,
        bedrock: Refused,
    },
    Field {
        name: "audio",
        sample: r#"{"voice":"alloy"}"#,
        inert: null,
        anthropic: Refused,
        gemini: Refused,
        bedrock: Refused,
    },
    Field {
        name: "prediction",
        sample: r#"{"type":"content","content":"x"}"#,
        inert: null,
        anthropic: Refused,
        gemini: Refused,
        bedrock: Refused,
    },
    Field {
        name: "web_search_options",
        sample: "{}",
        inert: null,
        anthropic: Refused,
        gemini: Refused,
        bedrock: Refused,
    },
    Field {
        name: "functions",
        sample: r#"[{"name":"f"}]"#,
        inert: null,
        anthropic: Refused,
        gemini: Refused,
        bedrock: Refused,
    },
    Field {
        name: "function_call",
        sample: r#""auto""#,
        inert: null,
        anthropic: Refused,
        gemini: Refused,
        bedrock: Refused,
    },
];

/// Refuses what `provider`'s translation would otherwise drop: a field the table refuses
/// (unless its value is inert) or a field the table does not know.
pub fn check(provider: Provider, req: &Map<String, Value>) -> Result<(), TranslateError> {
    for (name, value) in req {
        let field = FIELDS.iter().find(|f| f.name == name);
        let refused = match field {
            None => true,
            Some(f) => f.handling(provider) == Refused && !(f.inert)(value),
        };
        if refused {
            let param = field.map(|f| f.name);
            let shown: String = name.chars().take(64).collect();
            return Err(TranslateError::new(
                format!(
                    "`{shown}` is not supported by {} deployments (docs/provider-fields.md)",
                    provider.name()
                ),
                param,
            ));
        }
    }
    Ok(())
}

/// The table as `docs/provider-fields.md` shows it.
pub fn markdown() -> String {
    let cell = |h: Handling| match h {
        Translated(to) => format!("translated → `{to}`"),
        Refused => "**400**".to_owned(),
        Ignored(why) => format!("ignored: {why}"),
    };
    let mut out = String::from("| field | Anthropic | Gemini | Bedrock |\n|---|---|---|---|\n");
    for f in FIELDS {
        let cells: Vec<String> = Provider::ALL.iter().map(|&p| cell(f.handling(p))).collect();
        out.push_str(&format!("| `{}` | {} |\n", f.name, cells.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::translate::{openai_anthropic, openai_bedrock, openai_gemini};
    use serde_json::json;

    fn translate(provider: Provider, body: &Value) -> Result<Value, TranslateError> {
        let bytes = body.to_string().into_bytes();
        let out = match provider {
            Provider::Anthropic => {
                openai_anthropic::request(&bytes, "up", body["stream"] == Value::Bool(true))?
            }
            Provider::Gemini => openai_gemini::request(&bytes)?,
            Provider::Bedrock => openai_bedrock::request(&bytes)?,
        };
        Ok(serde_json::from_slice(&out).unwrap())
    }

    /// Every row of the table, for every provider, against the real translation.
    #[test]
    fn every_field_is_translated_refused_or_ignored_as_the_table_says() {
        for field in FIELDS {
            for provider in Provider::ALL {
                let mut body =
                    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
                let sample: Value = serde_json::from_str(field.sample).unwrap();
                body[field.name] = sample.clone();
                if field.name == "tool_choice" || field.name == "parallel_tool_calls" {
                    let tools = FIELDS.iter().find(|f| f.name == "tools").unwrap();
                    body["tools"] = serde_json::from_str(tools.sample).unwrap();
                }
                let what = format!("{} on {}", field.name, provider.name());
                let result = translate(provider, &body);
                match field.handling(provider) {
                    Refused => {
                        let err = result.expect_err(&what);
                        assert_eq!(err.param, Some(field.name), "{what}");
                        assert!(
                            err.message.contains(provider.name())
                                && err.message.contains(field.name),
                            "{what}: {}",
                            err.message
                        );
                    }
                    Translated(to) if to.starts_with('/') => {
                        let out = result.unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert!(out.pointer(to).is_some(), "{what}: {to} missing in {out}");
                    }
                    Translated(_) | Ignored(_) => {
                        result.unwrap_or_else(|e| panic!("{what}: {e}"));
                    }
                }
            }
        }
    }

    #[test]
    fn inert_values_and_unknown_fields() {
        for provider in Provider::ALL {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "n": 1, "logprobs": false, "logit_bias": {}, "frequency_penalty": 0, "response_format": {"type": "text"}});
            translate(provider, &body).unwrap();
            let unknown = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "surprise": 1});
            let err = translate(provider, &unknown).unwrap_err();
            assert!(err.message.contains("surprise"), "{}", err.message);
        }
    }

    /// Prints the table for the docs: `cargo test -p switchboard-dataplane --lib
    /// print_provider_fields -- --ignored --nocapture`.
    #[test]
    #[ignore = "prints the docs table"]
    fn print_provider_fields() {
        print!("{}", markdown());
    }

    #[test]
    fn the_docs_show_this_table() {
        let doc = include_str!("../../../../docs/provider-fields.md");
        assert!(
            doc.contains(&markdown()),
            "docs/provider-fields.md is out of date: paste translate::fields::markdown()"
        );
    }
}
