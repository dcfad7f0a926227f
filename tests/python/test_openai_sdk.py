"""The official `openai` Python SDK against a live Switchboard gateway.

Run by tests/tests/openai_sdk.rs, which starts the mock upstream and a gateway and passes
their coordinates in the environment:

- SWITCHBOARD_BASE_URL: the gateway's /v1 URL
- SWITCHBOARD_KEY: a key allowed to use `m`, `embed` and `broken`
- SWITCHBOARD_LIMITED_KEY: a key limited to one request per minute

Models: `m` (chat/completions on the mock upstream), `embed` (embeddings), `broken` (its
upstream always fails with 500), `other` (exists, but SWITCHBOARD_KEY may not use it).
"""

import os

import openai
import pytest

BASE_URL = os.environ["SWITCHBOARD_BASE_URL"]
KEY = os.environ["SWITCHBOARD_KEY"]
LIMITED_KEY = os.environ["SWITCHBOARD_LIMITED_KEY"]
MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(key=KEY):
    # No SDK retries: each test must see the gateway's first answer.
    return openai.OpenAI(base_url=BASE_URL, api_key=key, max_retries=0, timeout=10)


def test_chat_completion():
    reply = client().chat.completions.create(model="m", messages=MESSAGES)
    assert reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_streamed_chat_without_usage_gets_no_usage_chunk():
    chunks = list(client().chat.completions.create(model="m", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.choices for c in chunks), "a usage-only chunk reached a client that did not ask"
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_streamed_chat_with_usage_ends_with_it():
    chunks = list(
        client().chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_embedding():
    reply = client().embeddings.create(model="embed", input="hello")
    assert len(reply.data[0].embedding) > 0
    assert reply.usage.prompt_tokens > 0


def test_model_list_shows_only_the_keys_models():
    ids = {m.id for m in client().models.list()}
    assert {"m", "embed", "broken"} <= ids
    assert "other" not in ids


def test_bad_key_is_authentication_error():
    with pytest.raises(openai.AuthenticationError) as e:
        client("sk-not-a-key").chat.completions.create(model="m", messages=MESSAGES)
    assert e.value.status_code == 401
    assert e.value.body["type"] == "authentication_error"


def test_forbidden_model_is_permission_denied():
    with pytest.raises(openai.PermissionDeniedError) as e:
        client().chat.completions.create(model="other", messages=MESSAGES)
    assert e.value.status_code == 403


def test_unknown_model_is_not_found():
    with pytest.raises(openai.NotFoundError) as e:
        client().chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert e.value.body["code"] == "model_not_found"


def test_malformed_request_is_bad_request():
    with pytest.raises(openai.BadRequestError) as e:
        client().chat.completions.create(model=12345, messages=MESSAGES)
    assert e.value.body["param"] == "model"


def test_rate_limit_is_rate_limit_error():
    limited = client(LIMITED_KEY)
    limited.chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as e:
        limited.chat.completions.create(model="m", messages=MESSAGES)
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_upstream_failure_is_server_error():
    with pytest.raises(openai.InternalServerError) as e:
        client().chat.completions.create(model="broken", messages=MESSAGES)
    assert e.value.status_code == 502


def test_oversize_body_is_413():
    with pytest.raises(openai.APIStatusError) as e:
        client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x" * 300_000}]
        )
    assert e.value.status_code == 413
