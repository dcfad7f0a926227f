"""The official `openai` SDK's Responses API (`client.responses.*`) through the gateway.

Run by tests/tests/provider_sdks.rs. Models: `gpt-native` (an OpenAI-compatible deployment
tagged `responses_api`: the request passes through to the mock's `/v1/responses`), `claude`
(Anthropic: translated Responses -> chat -> Messages and back), `gpt` (an OpenAI-compatible
deployment without the tag: translated to chat completions).
"""

import os

import openai
import pytest

BASE_URL = os.environ["SWITCHBOARD_ROOT_URL"] + "/v1"
KEY = os.environ["SWITCHBOARD_KEY"]
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Get the current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    }
]


def client():
    return openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=10)


def test_native_responses_passthrough_with_usage():
    reply = client().responses.create(model="gpt-native", input="Hello")
    assert reply.output_text == "Responses mock saw 1 input items."
    assert reply.usage.input_tokens == 21
    assert reply.usage.input_tokens_details.cached_tokens == 5
    assert reply.usage.output_tokens == 9


def test_native_responses_stream():
    events = list(client().responses.create(model="gpt-native", input="Hello", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Responses mock saw 1 input items."
    assert events[-1].response.usage.output_tokens == 9


def test_native_function_tool():
    reply = client().responses.create(model="gpt-native", input="Weather in Paris?", tools=TOOLS)
    call = reply.output[0]
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert call.arguments == '{"location":"Paris"}'


def test_native_previous_response_id_sends_the_whole_conversation():
    first = client().responses.create(model="gpt-native", input="Hi")
    second = client().responses.create(
        model="gpt-native", input="And then?", previous_response_id=first.id
    )
    # The mock stores nothing: the gateway sent the first input, its answer, and the new input.
    assert second.output_text == "Responses mock saw 3 input items."
    third = client().responses.create(
        model="gpt-native", input="More", previous_response_id=second.id
    )
    assert third.output_text == "Responses mock saw 5 input items."


def test_retrieve_and_delete_a_stored_response():
    first = client().responses.create(model="claude", input="Hello")
    got = client().responses.retrieve(first.id)
    assert got.id == first.id
    assert got.output_text == "Hi! My name is Claude."
    client().responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client().responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client().responses.create(model="claude", input="x", previous_response_id=first.id)


def test_store_false_is_not_kept():
    reply = client().responses.create(model="claude", input="Hello", store=False)
    with pytest.raises(openai.NotFoundError):
        client().responses.retrieve(reply.id)


def test_anthropic_responses_with_cache_usage():
    reply = client().responses.create(
        model="claude", instructions="Be brief.", input="Hello", max_output_tokens=100
    )
    assert reply.object == "response"
    assert reply.status == "completed"
    assert reply.output_text == "Hi! My name is Claude."
    assert reply.usage.input_tokens == 75
    assert reply.usage.input_tokens_details.cached_tokens == 40
    assert reply.usage.output_tokens == 15


def test_anthropic_responses_stream():
    events = list(client().responses.create(model="claude", input="Hello", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello! How can I help?"
    done = events[-1].response
    assert done.output_text == "Hello! How can I help?"
    assert done.usage.output_tokens == 15


def test_anthropic_function_tool_and_its_output_with_previous_response_id():
    first = client().responses.create(model="claude", input="Weather in Paris?", tools=TOOLS)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    second = client().responses.create(
        model="claude",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "22C"}],
        tools=TOOLS,
    )
    assert second.status == "completed"
    assert second.output


def test_anthropic_function_tool_stream():
    events = list(
        client().responses.create(model="claude", input="Weather?", tools=TOOLS, stream=True)
    )
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert any(item.type == "function_call" for item in added)
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = events[-1].response
    call = [item for item in done.output if item.type == "function_call"][0]
    assert call.arguments == args


def test_chat_only_openai_deployment_is_translated():
    reply = client().responses.create(model="gpt", input=[{"role": "user", "content": "Hello"}])
    assert reply.output_text == "Hello! How can I assist you today?"
    assert reply.usage.input_tokens == 19


def test_a_builtin_tool_on_a_translated_deployment_is_a_400_naming_it():
    with pytest.raises(openai.BadRequestError) as err:
        client().responses.create(model="claude", input="x", tools=[{"type": "web_search"}])
    assert "web_search" in str(err.value)
