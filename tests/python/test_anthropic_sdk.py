"""The official `anthropic` Python SDK against the gateway's /v1/messages.

Run by tests/tests/provider_sdks.rs, which starts the mock upstream and a gateway and passes
their coordinates in the environment:

- SWITCHBOARD_ROOT_URL: the gateway's root URL (the SDK appends /v1/messages)
- SWITCHBOARD_KEY: a key allowed to use every model

Models: `claude` (an Anthropic deployment: bytes pass through), `gpt` (an OpenAI-compatible
deployment: translated both ways), `vertex-claude` (Claude on Vertex AI: `rawPredict`), `claude-too-long` and `claude-busy` (Anthropic upstreams
that refuse every prompt as too long, or rate limit it with `retry-after: 7`). The SDK sends the key as `Authorization: Bearer`.
"""

import json
import os

import anthropic
import pytest

ROOT_URL = os.environ["SWITCHBOARD_ROOT_URL"]
KEY = os.environ["SWITCHBOARD_KEY"]
MESSAGES = [{"role": "user", "content": "Hello"}]
TOOLS = [
    {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "input_schema": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    }
]


def client(key=KEY):
    return anthropic.Anthropic(base_url=ROOT_URL, api_key=key, max_retries=0, timeout=10)


def test_message_from_an_anthropic_deployment():
    reply = client().messages.create(model="claude", max_tokens=100, messages=MESSAGES)
    assert reply.content[0].text == "Hi! My name is Claude."
    assert reply.stop_reason == "end_turn"
    assert reply.usage.input_tokens == 25
    assert reply.usage.cache_read_input_tokens == 40
    assert reply.usage.cache_creation_input_tokens == 10
    assert reply.usage.output_tokens == 15


def test_stream_from_an_anthropic_deployment():
    with client().messages.stream(model="claude", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello! How can I help?"
    assert final.usage.output_tokens == 15
    assert final.stop_reason == "end_turn"


def test_tools_from_an_anthropic_deployment():
    reply = client().messages.create(
        model="claude", max_tokens=100, messages=MESSAGES, tools=TOOLS,
        tool_choice={"type": "auto"},
    )
    assert reply.stop_reason == "tool_use"
    call = [b for b in reply.content if b.type == "tool_use"][0]
    assert call.name == "get_weather"
    assert call.input == {"location": "San Francisco, CA", "unit": "celsius"}


def test_streamed_tools_from_an_anthropic_deployment():
    with client().messages.stream(
        model="claude", max_tokens=100, messages=MESSAGES, tools=TOOLS
    ) as stream:
        final = stream.get_final_message()
    call = [b for b in final.content if b.type == "tool_use"][0]
    assert call.input == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert final.stop_reason == "tool_use"


def test_message_from_an_openai_deployment():
    reply = client().messages.create(
        model="gpt", max_tokens=100, system="Be brief.", messages=MESSAGES
    )
    assert reply.type == "message"
    assert reply.content[0].type == "text" and reply.content[0].text
    assert reply.stop_reason == "end_turn"
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0


def test_stream_from_an_openai_deployment():
    with client().messages.stream(model="gpt", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("tok0 ")
    assert final.content[0].text == text
    assert final.usage.output_tokens > 0
    assert final.stop_reason == "end_turn"


def test_tools_from_an_openai_deployment():
    reply = client().messages.create(model="gpt", max_tokens=100, messages=MESSAGES, tools=TOOLS)
    assert reply.stop_reason == "tool_use"
    call = [b for b in reply.content if b.type == "tool_use"][0]
    assert call.id == "call_abc123"
    assert call.name == "get_current_weather"
    assert call.input == {"location": "Boston, MA"}


def test_streamed_tools_from_an_openai_deployment():
    with client().messages.stream(
        model="gpt", max_tokens=100, messages=MESSAGES, tools=TOOLS
    ) as stream:
        final = stream.get_final_message()
    call = [b for b in final.content if b.type == "tool_use"][0]
    assert call.name == "get_current_weather"
    assert call.input == {"location": "Boston, MA"}
    assert final.stop_reason == "tool_use"


def test_a_tool_result_round_trip_is_accepted():
    history = MESSAGES + [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "SF"}}
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C and sunny"}
        ]},
    ]
    for model in ("claude", "gpt"):
        reply = client().messages.create(model=model, max_tokens=50, messages=history, tools=TOOLS)
        assert reply.content


def test_errors_are_the_sdks_exception_classes():
    with pytest.raises(anthropic.AuthenticationError) as e:
        client("sk-wrong").messages.create(model="claude", max_tokens=5, messages=MESSAGES)
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError):
        client().messages.create(model="no-such-model", max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.BadRequestError) as e:
        client().messages.create(model="claude-too-long", max_tokens=5, messages=MESSAGES)
    assert "prompt is too long" in json.dumps(e.value.body)


def test_an_upstream_rate_limit_is_the_sdks_rate_limit_error():
    with pytest.raises(anthropic.RateLimitError) as e:
        client().messages.create(model="claude-busy", max_tokens=5, messages=MESSAGES)
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert e.value.response.headers["retry-after"] == "7"


def test_count_tokens_on_an_anthropic_deployment_is_the_providers_count():
    raw = client().messages.with_raw_response.count_tokens(
        model="claude", messages=MESSAGES, system="Be brief.", tools=TOOLS
    )
    assert raw.headers["x-switchboard-token-count"] == "provider"
    assert raw.parse().input_tokens == 42


def test_count_tokens_on_another_provider_is_an_estimate_marked_as_such():
    raw = client().messages.with_raw_response.count_tokens(
        model="gpt", messages=[{"role": "user", "content": "x" * 400}]
    )
    assert raw.headers["x-switchboard-token-count"] == "estimate"
    assert raw.parse().input_tokens == 100


def test_count_tokens_for_an_unknown_model_is_the_sdks_not_found_error():
    with pytest.raises(anthropic.NotFoundError):
        client().messages.count_tokens(model="no-such-model", messages=MESSAGES)


def test_a_beta_header_reaches_an_anthropic_deployment():
    reply = client().messages.create(
        model="claude",
        max_tokens=100,
        messages=MESSAGES,
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    assert reply.content[0].text == "Hi! My name is Claude."


def test_message_and_stream_from_claude_on_vertex():
    reply = client().messages.create(model="vertex-claude", max_tokens=100, messages=MESSAGES)
    assert reply.content[0].text == "Hi! My name is Claude."
    assert reply.usage.cache_read_input_tokens == 40
    with client().messages.stream(model="vertex-claude", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello! How can I help?"
    assert final.usage.output_tokens == 15


def test_tools_from_claude_on_vertex():
    reply = client().messages.create(
        model="vertex-claude", max_tokens=100, messages=MESSAGES, tools=TOOLS
    )
    assert reply.stop_reason == "tool_use"
    call = [b for b in reply.content if b.type == "tool_use"][0]
    assert call.input == {"location": "San Francisco, CA", "unit": "celsius"}
