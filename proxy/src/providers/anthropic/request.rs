//! OpenAI request → Anthropic Messages request body.
//!
//! - `system`/`developer` messages, wherever they are, are joined (blank line
//!   between) into the top-level `system`.
//! - `tool` messages become `tool_result` blocks in a user turn (their
//!   content a string, or text and image blocks when the message has
//!   images); assistant `tool_calls` become `tool_use` blocks.
//! - Consecutive turns of the same role are merged, so roles alternate.
//! - `stop` → `stop_sequences` (whitespace-only ones, which Anthropic
//!   refuses, left out; so are whitespace-only text blocks), `user` →
//!   `metadata.user_id`, `tools` →
//!   `tools[].input_schema` (`"type": "object"` added where the schema has
//!   no `type`, which Anthropic requires), `tool_choice` →
//!   `{type: auto|any|none|tool}`.
//! - `parallel_tool_calls: false` → `tool_choice.disable_parallel_tool_use`
//!   (`{type: auto}` when the client named no choice; not on `none`, which
//!   has no such field).
//! - `temperature` is clamped to Anthropic's 0–1; with both `temperature`
//!   and `top_p`, only `temperature` is sent (current models refuse both).
//! - `response_format` (`json_object`, or `json_schema` with an object
//!   schema) becomes a tool whose input is the answer
//!   ([`super::RESPONSE_FORMAT_TOOL`]): forced alone, or beside the client's
//!   tools with `tool_choice: any` (see `build_body`).
//! - Fields Anthropic does not have (`seed`, `logprobs`, …) are dropped;
//!   `n > 1` is refused, and so is a conversation of system messages only
//!   (Anthropic needs a user or assistant turn; OpenAI answers it).

use super::super::gemini::strip_thought_signature;
use super::super::openai::{
    ChatMessage, ChatRequest, ContentPart, MessageContent, Role, ToolChoice, ToolChoiceMode,
};
use super::super::upstream::{
    self, function_call, function_tool, parse_data_url, tool_arguments, unsupported_tool_choice,
    PrepareError, ResponseFormat,
};
use super::RESPONSE_FORMAT_TOOL;
use serde::Serialize;
use serde_json::{json, Value};

const PROVIDER: &str = "Anthropic";

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Turn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<ToolDef<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
}

#[derive(Serialize)]
struct Turn {
    role: &'static str,
    content: Vec<Block>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: ToolResultContent,
    },
}

/// `tool_result.content`: a string, or text and image blocks.
#[derive(Serialize)]
#[serde(untagged)]
enum ToolResultContent {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Serialize)]
struct ToolDef<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: Value,
}

/// The JSON body for `POST /v1/messages`.
pub(crate) fn build_body(
    request: &ChatRequest,
    model: &str,
    max_tokens: u64,
    stream: bool,
) -> Result<Vec<u8>, PrepareError> {
    if request.n.unwrap_or(1) > 1 {
        return Err(PrepareError::Unsupported {
            provider: PROVIDER,
            field: "n".to_owned(),
            reason: "only one choice can be generated".to_owned(),
        });
    }
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for (i, message) in request.messages.iter().enumerate() {
        let (role, blocks) = match message.role {
            Role::System | Role::Developer => {
                system.push(message.text_content());
                continue;
            }
            Role::User => ("user", content_blocks(message, i)?),
            Role::Assistant => ("assistant", assistant_blocks(message, i)?),
            Role::Tool => ("user", vec![tool_result(message, i)?]),
        };
        push_turn(&mut turns, role, blocks);
    }
    if turns.is_empty() {
        return Err(upstream::only_system(PROVIDER));
    }
    let format_tool = format_tool(request)?;
    let mut tools = request
        .tools
        .as_ref()
        .map(|tools| {
            tools
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let f = function_tool(t, i, PROVIDER)?;
                    if f.name == RESPONSE_FORMAT_TOOL {
                        return Err(reserved_name(format!("tools[{i}].function.name")));
                    }
                    Ok(ToolDef {
                        name: &f.name,
                        description: f.description.as_deref(),
                        input_schema: input_schema(f.parameters.as_ref()),
                    })
                })
                .collect::<Result<Vec<_>, PrepareError>>()
        })
        .transpose()?;
    if let Some(ToolChoice::Named(named)) = &request.tool_choice {
        if named.function.name == RESPONSE_FORMAT_TOOL {
            return Err(reserved_name("tool_choice.function.name".to_owned()));
        }
    }
    let mut tool_choice = request.tool_choice.as_ref().map(tool_choice).transpose()?;
    if let Some(format_tool) = format_tool {
        // The answer is either a call to one of the client's tools or the
        // JSON: `any` tool, the format's being one. Where the client's
        // choice rules out its tools (`none`, or it has none) the format's
        // is forced, alone; where it requires one of them (`required`, a
        // named tool) there is no final answer yet, and no format tool.
        let own_tools = tools.as_ref().is_some_and(|t| !t.is_empty());
        let client_choice = request.tool_choice.as_ref();
        match client_choice {
            Some(ToolChoice::Mode(ToolChoiceMode::Required) | ToolChoice::Named(_))
                if own_tools => {}
            Some(ToolChoice::Mode(ToolChoiceMode::Auto)) | None if own_tools => {
                // One call: a client tool's, or the answer (never both, which
                // would be an answer given before the tools ran).
                tools.get_or_insert_with(Vec::new).push(format_tool);
                tool_choice = Some(json!({"type": "any", "disable_parallel_tool_use": true}));
            }
            _ => {
                tools.get_or_insert_with(Vec::new).push(format_tool);
                tool_choice = Some(json!({"type": "tool", "name": RESPONSE_FORMAT_TOOL,
                    "disable_parallel_tool_use": true}));
            }
        }
    }
    if !parallel_tool_calls(request)? && tools.as_ref().is_some_and(|t| !t.is_empty()) {
        disable_parallel_tool_use(tool_choice.get_or_insert_with(|| json!({"type": "auto"})));
    }
    let body = MessagesRequest {
        model,
        max_tokens,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages: turns,
        stop_sequences: stop_sequences(request),
        // Anthropic's range is 0–1 (OpenAI's 0–2), and its current models
        // refuse `temperature` together with `top_p`: the temperature wins.
        temperature: request.temperature.map(|t| t.clamp(0.0, 1.0)),
        top_p: request.top_p.filter(|_| request.temperature.is_none()),
        stream,
        tools,
        tool_choice,
        metadata: request.user.as_ref().map(|u| json!({ "user_id": u })),
    };
    Ok(serde_json::to_vec(&body)?)
}

/// OpenAI's `parallel_tool_calls` (absent or `null`: its default, `true`).
fn parallel_tool_calls(request: &ChatRequest) -> Result<bool, PrepareError> {
    match request.extra.get("parallel_tool_calls") {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(parallel)) => Ok(*parallel),
        Some(_) => Err(PrepareError::InvalidField {
            field: "parallel_tool_calls".to_owned(),
            reason: "must be true or false".to_owned(),
        }),
    }
}

/// Marks an Anthropic `tool_choice` as allowing at most one tool call.
/// `none` is left alone: it takes no such field (and allows no call).
fn disable_parallel_tool_use(choice: &mut Value) {
    if let Some(choice) = choice.as_object_mut() {
        if choice.get("type").and_then(Value::as_str) != Some("none") {
            choice.insert("disable_parallel_tool_use".to_owned(), Value::Bool(true));
        }
    }
}

/// A tool's `parameters` as Anthropic's `input_schema`, whose `type` is
/// required: a schema without one (`{}` is OpenAI's "no parameters") gets
/// `"type": "object"`, and `{}` an empty `properties`. A schema with a
/// `type` is sent as it is.
fn input_schema(parameters: Option<&Value>) -> Value {
    match parameters {
        None => json!({"type": "object", "properties": {}}),
        Some(Value::Object(schema)) if !schema.contains_key("type") => {
            let mut schema = schema.clone();
            if schema.is_empty() {
                schema.insert("properties".to_owned(), json!({}));
            }
            schema.insert("type".to_owned(), json!("object"));
            Value::Object(schema)
        }
        Some(schema) => schema.clone(),
    }
}

/// A client naming [`RESPONSE_FORMAT_TOOL`] in `field`.
fn reserved_name(field: String) -> PrepareError {
    PrepareError::InvalidField {
        field,
        reason: format!("'{RESPONSE_FORMAT_TOOL}' is reserved by Tollgate"),
    }
}

/// Whether the request reaches Claude with tools: the client's, or the one
/// its `response_format` becomes ([`format_tool`]). Anthropic then adds a
/// tool-use system prompt, billed as input. A `response_format` that
/// [`build_body`] would refuse counts as tools (the request never leaves).
pub(crate) fn sends_tools(request: &ChatRequest) -> bool {
    request.tools.as_ref().is_some_and(|t| !t.is_empty())
        || !matches!(
            upstream::response_format(request, PROVIDER),
            Ok(ResponseFormat::Text)
        )
}

/// The forced tool standing for `response_format`, if it asks for JSON.
/// Anthropic takes only object schemas as a tool's input, which is also
/// what OpenAI's structured outputs require at the root.
fn format_tool(request: &ChatRequest) -> Result<Option<ToolDef<'_>>, PrepareError> {
    let (description, input_schema) = match upstream::response_format(request, PROVIDER)? {
        ResponseFormat::Text => return Ok(None),
        ResponseFormat::JsonObject => (None, json!({"type": "object"})),
        ResponseFormat::JsonSchema {
            description,
            schema,
            ..
        } => {
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                return Err(PrepareError::Unsupported {
                    provider: PROVIDER,
                    field: "response_format.json_schema.schema".to_owned(),
                    reason: "only a schema of \"type\": \"object\" can be translated".to_owned(),
                });
            }
            (description, schema.clone())
        }
    };
    Ok(Some(ToolDef {
        name: RESPONSE_FORMAT_TOOL,
        description: Some(
            description.unwrap_or("Respond by calling this tool: its input is your answer."),
        ),
        input_schema,
    }))
}

/// Appends a turn, merging it into the previous one when the role repeats.
/// Turns with no blocks (empty text) are dropped.
fn push_turn(turns: &mut Vec<Turn>, role: &'static str, blocks: Vec<Block>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => turns.push(Turn {
            role,
            content: blocks,
        }),
    }
}

/// A text block, unless the text is empty or only whitespace, which
/// Anthropic refuses ("text content blocks must contain non-whitespace
/// text"): a model's blank reply sent back in the history is left out.
fn text_block(text: String) -> Option<Block> {
    (!text.trim().is_empty()).then_some(Block::Text { text })
}

/// `stop` without the whitespace-only sequences (`"\n"` is a common one),
/// which Anthropic refuses ("each stop sequence must contain
/// non-whitespace"): the answer is then not cut there.
fn stop_sequences(request: &ChatRequest) -> Option<Vec<String>> {
    let sequences: Vec<String> = request
        .stop
        .as_ref()?
        .sequences()
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .collect();
    (!sequences.is_empty()).then_some(sequences)
}

fn content_blocks(message: &ChatMessage, i: usize) -> Result<Vec<Block>, PrepareError> {
    match &message.content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(text)) => Ok(text_block(text.clone()).into_iter().collect()),
        Some(MessageContent::Parts(parts)) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                blocks.extend(part_block(part, || format!("messages[{i}].content[{j}]"))?);
            }
            Ok(blocks)
        }
    }
}

fn part_block(
    part: &ContentPart,
    field: impl Fn() -> String,
) -> Result<Option<Block>, PrepareError> {
    match (part.kind.as_str(), &part.text, &part.image_url) {
        ("text", Some(text), _) => Ok(text_block(text.clone())),
        ("image_url", _, Some(image)) => {
            let source = match parse_data_url(&image.url) {
                Some(d) => ImageSource::Base64 {
                    media_type: d.media_type.to_owned(),
                    data: d.data.to_owned(),
                },
                None => ImageSource::Url {
                    url: image.url.clone(),
                },
            };
            Ok(Some(Block::Image { source }))
        }
        (kind, _, _) => Err(PrepareError::Unsupported {
            provider: PROVIDER,
            field: field(),
            reason: format!("content parts of type '{kind}' cannot be translated"),
        }),
    }
}

fn assistant_blocks(message: &ChatMessage, i: usize) -> Result<Vec<Block>, PrepareError> {
    let mut blocks = content_blocks(message, i)?;
    for (j, call) in message.tool_calls.iter().flatten().enumerate() {
        let function = function_call(call, (i, j), PROVIDER)?;
        let input = tool_arguments(&function.arguments, || {
            format!("messages[{i}].tool_calls[{j}].function.arguments")
        })?;
        let mut id = call.id.clone();
        strip_thought_signature(&mut id);
        blocks.push(Block::ToolUse {
            id,
            name: function.name.clone(),
            input,
        });
    }
    Ok(blocks)
}

/// A `tool` message as a `tool_result` block: its text as a string, or,
/// when its parts hold more than text (images), the parts as blocks, built
/// (and refused) as a user's are.
fn tool_result(message: &ChatMessage, i: usize) -> Result<Block, PrepareError> {
    let mut tool_use_id = message.tool_call_id.clone().unwrap_or_default();
    strip_thought_signature(&mut tool_use_id);
    let content = match &message.content {
        Some(MessageContent::Parts(parts)) if parts.iter().any(|p| p.kind != "text") => {
            ToolResultContent::Blocks(content_blocks(message, i)?)
        }
        _ => ToolResultContent::Text(message.text_content()),
    };
    Ok(Block::ToolResult {
        tool_use_id,
        content,
    })
}

fn tool_choice(choice: &ToolChoice) -> Result<Value, PrepareError> {
    Ok(match choice {
        ToolChoice::Mode(ToolChoiceMode::Auto) => json!({"type": "auto"}),
        ToolChoice::Mode(ToolChoiceMode::Required) => json!({"type": "any"}),
        ToolChoice::Mode(ToolChoiceMode::None) => json!({"type": "none"}),
        ToolChoice::Named(named) => json!({"type": "tool", "name": named.function.name}),
        ToolChoice::Other(_) => return Err(unsupported_tool_choice(PROVIDER)),
    })
}

#[cfg(test)]
mod tests;
