"""The official `openai` SDK's image and audio calls through the gateway.

Run by tests/tests/media.rs, which then checks that each call's usage record costs what
LiteLLM's price file states. Models: `img` (gpt-image-1), `stt` (whisper-1), `tts` (tts-1), all
on an OpenAI-compatible deployment at the mock upstream.
"""

import os

import openai

BASE_URL = os.environ["SWITCHBOARD_ROOT_URL"] + "/v1"
KEY = os.environ["SWITCHBOARD_KEY"]
# 3 s of the mock's audio (16,000 bytes a second).
AUDIO = bytes(range(256)) * (48_000 // 256) + bytes(48_000 % 256)


def client():
    return openai.OpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=10)


def test_images_generate():
    reply = client().images.generate(
        model="img", prompt="a red fox", n=2, size="1024x1536", quality="medium"
    )
    assert len(reply.data) == 2
    assert reply.data[0].b64_json
    assert reply.quality == "medium"
    assert reply.size == "1024x1536"
    assert reply.usage.input_tokens == 50


def test_audio_transcriptions_create():
    reply = client().audio.transcriptions.create(
        model="stt", file=("speech.mp3", AUDIO, "audio/mpeg")
    )
    assert reply.text == "The quick brown fox jumped over the lazy dog."


def test_audio_transcriptions_verbose_json():
    reply = client().audio.transcriptions.create(
        model="stt", file=("speech.mp3", AUDIO, "audio/mpeg"), response_format="verbose_json"
    )
    assert reply.duration == 3.0
    assert reply.segments[0].text == reply.text


def test_audio_speech_create():
    reply = client().audio.speech.create(model="tts", voice="alloy", input="Hello there, fox!")
    audio = reply.read()
    assert audio.startswith(b"ID3")
    assert len(audio) == 10 + 64 * len("Hello there, fox!")


def test_audio_speech_streamed_response():
    with client().audio.speech.with_streaming_response.create(
        model="tts", voice="alloy", input="Hi"
    ) as reply:
        assert reply.headers["content-type"] == "audio/mpeg"
        audio = b"".join(reply.iter_bytes())
    assert len(audio) == 10 + 64 * 2


def test_a_model_without_an_openai_deployment_is_a_clear_400():
    try:
        client().images.generate(model="claude", prompt="a fox")
    except openai.BadRequestError as error:
        assert "`openai`" in error.message
    else:
        raise AssertionError("expected a 400")
