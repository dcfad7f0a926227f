"""The official `openai` Python SDK against deployments on every provider, through the gateway.

Run by tests/tests/provider_sdks.rs (see test_anthropic_sdk.py for the environment). Models:
`claude` (Anthropic, translated), `azure` (Azure OpenAI), `gemini` (Gemini, translated), `bedrock` (Bedrock Converse, SigV4), `vertex-gemini` and
`vertex-claude` (Vertex AI with a service account's OAuth2 token: a Gemini model and Claude),
`claude-too-long` (an Anthropic
upstream that refuses every prompt as too long).
"""

import json
import os

import openai
import pytest

BASE_URL = os.environ["SWITCHBOARD_ROOT_URL"] + "/v1"
KEY = os.environ["SWITCHBOARD_KEY"]
MESSAGES = [{"role": "user", "content": "Hello"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
]


def client():
    return openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=10)


def test_anthropic_chat_with_cache_usage():
    reply = client().chat.completions.create(model="claude", messages=MESSAGES)
    assert reply.choices[0].message.content == "Hi! My name is Claude."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == 75
    assert reply.usage.prompt_tokens_details.cached_tokens == 40
    assert reply.usage.completion_tokens == 15


def test_anthropic_stream_with_usage():
    chunks = list(
        client().chat.completions.create(
            model="claude", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! How can I help?"
    assert chunks[-1].usage.completion_tokens == 15


def test_anthropic_tools_and_images():
    reply = client().chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "Weather where this photo was taken?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}],
        tools=TOOLS,
        tool_choice="required",
    )
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "San Francisco, CA", "unit": "celsius"}


def test_anthropic_streamed_tool_call():
    chunks = list(
        client().chat.completions.create(model="claude", messages=MESSAGES, tools=TOOLS, stream=True)
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls)
    assert json.loads(arguments) == {"location": "San Francisco, CA", "unit": "fahrenheit"}


def test_anthropic_context_length_is_a_bad_request():
    with pytest.raises(openai.BadRequestError) as e:
        client().chat.completions.create(model="claude-too-long", messages=MESSAGES)
    assert e.value.code == "context_length_exceeded"


def test_azure_chat_stream_and_embeddings():
    reply = client().chat.completions.create(model="azure", messages=MESSAGES)
    assert reply.choices[0].message.content
    chunks = list(client().chat.completions.create(model="azure", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    emb = client().embeddings.create(model="azure-embed", input="hello")
    assert len(emb.data[0].embedding) > 0


def test_azure_tool_call():
    reply = client().chat.completions.create(model="azure", messages=MESSAGES, tools=TOOLS)
    call = reply.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"location": "Boston, MA"}


def test_gemini_chat_stream_and_tools():
    reply = client().chat.completions.create(model="gemini", messages=MESSAGES)
    assert reply.choices[0].message.content == "AI learns patterns from data to make predictions."
    assert reply.usage.prompt_tokens_details.cached_tokens == 100
    chunks = list(
        client().chat.completions.create(
            model="gemini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "AI learns patterns from data to make predictions."
    assert chunks[-1].usage.prompt_tokens == 120
    reply = client().chat.completions.create(model="gemini", messages=MESSAGES, tools=TOOLS)
    call = reply.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"location": "Boston, MA"}


def test_bedrock_chat_stream_and_tools():
    reply = client().chat.completions.create(model="bedrock", messages=MESSAGES)
    assert reply.choices[0].message.content == "Hello! How can I help you today?"
    assert reply.usage.prompt_tokens == 50 and reply.usage.completion_tokens == 12
    chunks = list(
        client().chat.completions.create(
            model="bedrock", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! How can I help you today?"
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 16
    chunks = list(
        client().chat.completions.create(model="bedrock", messages=MESSAGES, tools=TOOLS, stream=True)
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "top_song"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"sign": "WZPZ"}


def test_vertex_gemini_chat_stream_and_tools():
    reply = client().chat.completions.create(model="vertex-gemini", messages=MESSAGES)
    assert reply.choices[0].message.content == "AI learns patterns from data to make predictions."
    chunks = list(
        client().chat.completions.create(
            model="vertex-gemini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "AI learns patterns from data to make predictions."
    assert chunks[-1].usage.prompt_tokens == 120
    reply = client().chat.completions.create(model="vertex-gemini", messages=MESSAGES, tools=TOOLS)
    call = reply.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"location": "Boston, MA"}


def test_vertex_claude_chat_stream_and_tools():
    reply = client().chat.completions.create(model="vertex-claude", messages=MESSAGES)
    assert reply.choices[0].message.content == "Hi! My name is Claude."
    assert reply.usage.prompt_tokens == 75
    chunks = list(
        client().chat.completions.create(
            model="vertex-claude", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! How can I help?"
    assert chunks[-1].usage.completion_tokens == 15
    reply = client().chat.completions.create(model="vertex-claude", messages=MESSAGES, tools=TOOLS)
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
