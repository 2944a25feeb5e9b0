//! The shared Realtime event schema (`shared/realtime/events.schema.json`, JSON Schema 2020-12)
//! compiled once per test process, and the mapping from a schema failure to the `error` event
//! the real server sends for a malformed client event (`unknown_parameter`, `invalid_value`, …).
//!
//! The schema is read from its shared location, never copied into the repository: first
//! `$CARGO_MANIFEST_DIR/../shared/realtime/events.schema.json`, then
//! `/work/shared/realtime/events.schema.json`. All its `$ref`s are internal (`#/$defs/…`), so the
//! validator needs no resolver. Sub-schemas (`#/$defs/ClientEvent`, `#/$defs/C_<Type>`) are
//! validated through a wrapper `{"$defs": <all defs>, "$ref": "#/$defs/<Name>"}`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::error::ValidationErrorKind;
use jsonschema::{ValidationError, Validator};
use serde_json::{json, Value};

/// Where the schema is looked for, in order.
pub fn schema_paths() -> [PathBuf; 2] {
    [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/realtime/events.schema.json"),
        PathBuf::from("/work/shared/realtime/events.schema.json"),
    ]
}

/// The compiled schema (loaded on first use; panics with the paths tried if it is missing).
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(Schema::load)
}

/// Why a client event was rejected, as the real server would report it.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// `error.code`: `invalid_event`, `invalid_value`, `unknown_parameter`, …
    pub code: &'static str,
    /// `error.param`: dotted path of the offending field (`session.temperature`).
    pub param: Option<String>,
    /// `error.message`, worded like the API's.
    pub message: String,
    /// What the validator said (every error, with its instance path), for the violation record.
    pub detail: String,
}

/// Validators for the whole schema, one direction, or one event type.
pub struct Schema {
    document: Value,
    root: Validator,
    client: Validator,
    server: Validator,
    client_types: Vec<String>,
    per_definition: Mutex<HashMap<String, Arc<Validator>>>,
}

impl Schema {
    fn load() -> Schema {
        let paths = schema_paths();
        let text = paths
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_else(|| panic!("Realtime event schema not found; tried {paths:?}"));
        let document: Value = serde_json::from_str(&text).expect("events.schema.json is JSON");
        let root = jsonschema::options()
            .build(&document)
            .expect("events.schema.json compiles");
        let client = compile_definition(&document, "ClientEvent");
        let server = compile_definition(&document, "ServerEvent");
        let client_types = document
            .pointer("/$defs/ClientEvent/properties/type/enum")
            .and_then(Value::as_array)
            .map(|types| {
                types
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .expect("ClientEvent lists its types");
        Schema {
            document,
            root,
            client,
            server,
            client_types,
            per_definition: Mutex::new(HashMap::new()),
        }
    }

    /// Validates one event of either direction against the root schema.
    pub fn validate(&self, event: &Value) -> Result<(), String> {
        describe(&self.root, event)
    }

    /// Validates against `#/$defs/ClientEvent`.
    pub fn validate_client(&self, event: &Value) -> Result<(), String> {
        describe(&self.client, event)
    }

    /// Validates against `#/$defs/ServerEvent`; on failure the message comes from the precise
    /// `#/$defs/S_<Type>` definition when the type is known.
    pub fn validate_server(&self, event: &Value) -> Result<(), String> {
        if self.server.is_valid(event) {
            return Ok(());
        }
        let event_type = event.get("type").and_then(Value::as_str);
        let precise = event_type
            .map(|t| format!("S_{}", camel_case(t)))
            .and_then(|name| self.definition(&name));
        match (precise, event_type) {
            (Some(validator), _) if !validator.is_valid(event) => describe(&validator, event),
            (None, Some(event_type)) => Err(format!("unknown server event type {event_type:?}")),
            _ => describe(&self.server, event),
        }
    }

    /// Validates against any `#/$defs/<name>` (e.g. `C_ConversationItemTruncate`).
    pub fn validate_definition(&self, name: &str, event: &Value) -> Result<(), String> {
        let validator = self
            .definition(name)
            .unwrap_or_else(|| panic!("no #/$defs/{name} in the schema"));
        describe(&validator, event)
    }

    /// Checks a client event like the server does; `None` if it is acceptable.
    pub fn reject_client_event(&self, event: &Value) -> Option<Rejection> {
        if self.client.is_valid(event) {
            return None;
        }
        let detail = describe(&self.client, event).err().unwrap_or_default();
        let rejection = |code, param: Option<&str>, message: String| Rejection {
            code,
            param: param.map(str::to_owned),
            message,
            detail: detail.clone(),
        };
        let Some(object) = event.as_object() else {
            return Some(rejection(
                "invalid_event",
                None,
                "The event must be a JSON object.".into(),
            ));
        };
        let Some(event_type) = object.get("type").and_then(Value::as_str) else {
            return Some(rejection(
                "invalid_event",
                Some("type"),
                "Missing required parameter: 'type'.".into(),
            ));
        };
        if !self.client_types.iter().any(|t| t == event_type) {
            return Some(rejection(
                "invalid_value",
                Some("type"),
                format!(
                    "Invalid value: '{event_type}'. Supported values are: {}.",
                    self.client_types
                        .iter()
                        .map(|t| format!("'{t}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let precise = self.definition(&format!("C_{}", camel_case(event_type)))?;
        let errors: Vec<ValidationError> = precise.iter_errors(event).collect();
        let first = errors.first()?;
        let (code, param, message) = api_error(best_leaf(first));
        Some(rejection(code, Some(param.as_str()), message))
    }

    fn definition(&self, name: &str) -> Option<Arc<Validator>> {
        self.document.pointer(&format!("/$defs/{name}"))?;
        let mut cache = self
            .per_definition
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let validator = cache
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(compile_definition(&self.document, name)));
        Some(Arc::clone(validator))
    }
}

fn compile_definition(document: &Value, name: &str) -> Validator {
    let wrapper = json!({
        "$schema": document["$schema"],
        "$id": document["$id"],
        "$defs": document["$defs"],
        "$ref": format!("#/$defs/{name}"),
    });
    jsonschema::options()
        .build(&wrapper)
        .unwrap_or_else(|error| panic!("#/$defs/{name} does not compile: {error}"))
}

fn describe(validator: &Validator, event: &Value) -> Result<(), String> {
    let errors: Vec<String> = validator
        .iter_errors(event)
        .take(8)
        .map(|error| {
            let leaf = best_leaf(&error);
            let mut line = format!("at '{}': {}", error.instance_path(), shortened(&error));
            if !std::ptr::eq(leaf, &error) {
                let path = leaf.instance_path();
                line.push_str(&format!(
                    " (closest branch: at '{path}': {})",
                    shortened(leaf)
                ));
            }
            line
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The validator's message, with any quoted instance (e.g. a whole audio event) cut short.
fn shortened(error: &ValidationError) -> String {
    const MAX: usize = 240;
    let text = error.to_string();
    if text.len() <= MAX {
        return text;
    }
    let cut = (0..=MAX)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}… ({} chars)", &text[..cut], text.len())
}

/// `oneOf`/`anyOf` failures say only "not valid under any of the schemas"; descend into the
/// branch that looks meant (fewest failures on a `type` discriminator, then fewest failures) to
/// find the error a person would report.
fn best_leaf<'a, 'i>(error: &'a ValidationError<'i>) -> &'a ValidationError<'i> {
    let context = match error.kind() {
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            context
        }
        _ => return error,
    };
    let discriminator_misses = |branch: &Vec<ValidationError<'static>>| {
        branch
            .iter()
            .filter(|e| {
                e.instance_path().as_str().ends_with("/type")
                    && matches!(
                        e.kind(),
                        ValidationErrorKind::Constant { .. } | ValidationErrorKind::Enum { .. }
                    )
            })
            .count()
    };
    let chosen = context
        .iter()
        .filter(|branch| !branch.is_empty())
        .min_by_key(|branch| (discriminator_misses(branch), branch.len()));
    match chosen.and_then(|branch| branch.first()) {
        Some(inner) => best_leaf(inner),
        None => error,
    }
}

fn api_error(error: &ValidationError) -> (&'static str, String, String) {
    let at = dotted(error.instance_path().as_str());
    let join = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let param = join(unexpected.first().map(String::as_str).unwrap_or_default());
            let message = format!("Unknown parameter: '{param}'.");
            ("unknown_parameter", param, message)
        }
        ValidationErrorKind::Required { property } => {
            let param = join(property.as_str().unwrap_or_default());
            let message = format!("Missing required parameter: '{param}'.");
            ("missing_required_parameter", param, message)
        }
        ValidationErrorKind::Type { .. } => {
            let message = format!("Invalid type for '{at}': {error}.");
            ("invalid_type", at, message)
        }
        _ => {
            let message = format!("Invalid value for '{at}': {error}.");
            ("invalid_value", at, message)
        }
    }
}

/// JSON pointer `/session/tools/0/meta` → the API's `session.tools[0].meta`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

/// `conversation.item.truncate` → `ConversationItemTruncate` (the schema's `C_`/`S_` names).
pub fn camel_case(event_type: &str) -> String {
    event_type
        .split(['.', '_'])
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}
