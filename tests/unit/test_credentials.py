"""Secrets in a connection's URL: split out, redacted, and turned into what a sender attaches."""

from __future__ import annotations

import base64

import pytest

from superollama.control import CredentialStore
from superollama.core import (
    Credential,
    UrlSecrets,
    credential_for,
    redact_text,
    redacted_url,
    split_url,
)
from superollama.core.credentials import SECRET_QUERY_PARAMS


@pytest.mark.parametrize(
    ("url", "public", "secrets", "shown"),
    [
        ("http://127.0.0.1:8/v1", "http://127.0.0.1:8/v1", UrlSecrets(), "http://127.0.0.1:8/v1"),
        (
            "http://bob:TOPSECRETPW@127.0.0.1:8/v1",
            "http://127.0.0.1:8/v1",
            UrlSecrets("bob:TOPSECRETPW"),
            "http://***@127.0.0.1:8/v1",
        ),
        ("https://TOKEN@example.com", "https://example.com", UrlSecrets("TOKEN"), "https://***@example.com"),
        (
            "https://h/openai?api-version=2024-02-01&api-key=K1&Token=t%2F2",
            "https://h/openai?api-version=2024-02-01",
            UrlSecrets(None, ("api-key=K1", "Token=t%2F2")),
            "https://h/openai?api-version=2024-02-01&api-key=***&Token=***",
        ),
        (
            "http://u:p%40ss@[::1]:9/v1?key=abc",
            "http://[::1]:9/v1",
            UrlSecrets("u:p%40ss", ("key=abc",)),
            "http://***@[::1]:9/v1?key=***",
        ),
    ],
)
def test_split_and_redact(url: str, public: str, secrets: UrlSecrets, shown: str) -> None:
    assert split_url(url) == (public, secrets)
    assert redacted_url(public, secrets) == shown
    assert UrlSecrets.from_json(secrets.to_json()) == secrets
    assert bool(secrets) == (url != public)


def test_every_documented_secret_parameter_is_split_out_whatever_its_case() -> None:
    for name in SECRET_QUERY_PARAMS:
        public, secrets = split_url(f"http://h/v1?{name.upper()}=s3cr3t&keep=1")
        assert public == "http://h/v1?keep=1" and secrets.query == (f"{name.upper()}=s3cr3t",)
    assert split_url("http://h/v1?keyboard=1&tokens=2")[1] == UrlSecrets()  # only whole names


def test_user_info_becomes_basic_auth_and_an_api_key_wins() -> None:
    secrets = UrlSecrets("bob:p%40ss", ("api-key=K1",))
    cred = credential_for(secrets, None)
    assert cred.headers == (("Authorization", "Basic " + base64.b64encode(b"bob:p@ss").decode()),)
    assert cred.path("/v1/models") == "/v1/models?api-key=K1"
    assert cred.path("/x?a=1") == "/x?a=1&api-key=K1"
    assert credential_for(secrets, "sk-1").headers == (("Authorization", "Bearer sk-1"),)
    assert credential_for(UrlSecrets(), None) == Credential()


def test_reprs_never_show_a_secret() -> None:
    cred = credential_for(UrlSecrets("bob:TOPSECRETPW", ("api-key=K3Y",)), None)
    store = CredentialStore()
    store.replace({"cred": cred})
    for text in (repr(cred), repr(UrlSecrets("bob:TOPSECRETPW", ("api-key=K3Y",))), repr(store)):
        assert "TOPSECRETPW" not in text and "K3Y" not in text and "Ym9i" not in text


def test_redact_text_hides_secrets_of_urls_in_free_text() -> None:
    text = "GET http://bob:PW@10.0.0.1:8/v1/models?v=1&api_key=SEC failed; retry https://tok@h/?Sig=abc"
    assert redact_text(text) == (
        "GET http://***@10.0.0.1:8/v1/models?v=1&api_key=*** failed; retry https://***@h/?Sig=***"
    )


def test_store_versions_change_only_with_content_and_survive_json() -> None:
    store, copy = CredentialStore(), CredentialStore()
    cred = Credential((("Authorization", "Bearer x"),), ("key=1",))
    store.replace({"a": cred})
    store.replace({"a": cred})
    assert store.version == 1
    copy.load_json(store.to_json())
    assert copy.credential("a") == cred and copy.credential("b") is None
