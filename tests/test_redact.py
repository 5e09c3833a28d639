"""redact_uri: the one helper that masks credentials wherever a URI is shown."""

from __future__ import annotations

import pytest

from earnevents.redact import MASK, redact_uri

SECRET = "s3cr3t"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        # Nothing to hide: shown as given
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
        (
            "mongodb://h1:27017,h2:27018/app?replicaSet=rs0&authSource=admin",
            "mongodb://h1:27017,h2:27018/app?replicaSet=rs0&authSource=admin",
        ),
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
        # Userinfo: the user stays, the password goes
        (f"redis://:{SECRET}@localhost:6379/0", f"redis://:{MASK}@localhost:6379/0"),
        (f"redis://alice:{SECRET}@localhost:6379/0", f"redis://alice:{MASK}@localhost:6379/0"),
        (
            f"rediss://alice:{SECRET}@r.example:6380/2?ssl_cert_reqs=required",
            f"rediss://alice:{MASK}@r.example:6380/2?ssl_cert_reqs=required",
        ),
        (
            f"mongodb://app:{SECRET}@h1:27017,h2:27017/db?replicaSet=rs0",
            f"mongodb://app:{MASK}@h1:27017,h2:27017/db?replicaSet=rs0",
        ),
        (f"mongodb+srv://app:{SECRET}@cluster0.example.net/db", f"mongodb+srv://app:{MASK}@cluster0.example.net/db"),
        (f"amqp://guest:{SECRET}@rabbit:5672/vhost", f"amqp://guest:{MASK}@rabbit:5672/vhost"),
        (f"unix://:{SECRET}@/run/redis.sock?db=0", f"unix://:{MASK}@/run/redis.sock?db=0"),
        # A bare userinfo may be a token: all of it goes
        (f"redis://{SECRET}@localhost/0", f"redis://{MASK}@localhost/0"),
        # Escaped and unescaped "@" / ":" in a password
        ("redis://:p%40ss%3Aword@h:1/0", f"redis://:{MASK}@h:1/0"),
        ("redis://:p@ss:w@rd@h:1/0", f"redis://:{MASK}@h:1/0"),
        # Query passwords (redis unix:// and sentinel://) and other secret-looking options
        (f"unix:///run/redis.sock?db=0&password={SECRET}", f"unix:///run/redis.sock?db=0&password={MASK}"),
        (f"redis://h/0?PASSWORD={SECRET}", f"redis://h/0?PASSWORD={MASK}"),
        (f"redis://h/0?pass%77ord={SECRET}", f"redis://h/0?pass%77ord={MASK}"),
        (
            f"redis://h/0?pwd={SECRET}&token={SECRET}&api_key={SECRET}&client_secret={SECRET}",
            f"redis://h/0?pwd={MASK}&token={MASK}&api_key={MASK}&client_secret={MASK}",
        ),
        (
            f"mongodb://h/?tls=true&tlsCertificateKeyFilePassword={SECRET}",
            f"mongodb://h/?tls=true&tlsCertificateKeyFilePassword={MASK}",
        ),
        (
            f"mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:{SECRET}",
            f"mongodb://h/?authMechanism=MONGODB-AWS&authMechanismProperties={MASK}",
        ),
        (f"mongodb://h/?w=1;password={SECRET};ssl=true", f"mongodb://h/?w=1;password={MASK};ssl=true"),
        # Several sentinels joined by ";", each masked
        (
            f"sentinel://:{SECRET}@s1:26379/0;sentinel://:{SECRET}@s2:26380/0?master_name=m&password={SECRET}",
            f"sentinel://:{MASK}@s1:26379/0;sentinel://:{MASK}@s2:26380/0?master_name=m&password={MASK}",
        ),
        # A fragment is never shown
        (f"redis://h/0#{SECRET}", f"redis://h/0#{MASK}"),
    ],
)
def test_a_uri_is_shown_with_its_credentials_masked(uri, shown):
    # When a URI is redacted
    # Then its password and secret query values are masked, everything else kept
    assert redact_uri(uri) == shown
    assert SECRET not in redact_uri(uri)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        # No scheme: nothing of it is shown
        (f":{SECRET}@localhost:6379/0", MASK),
        (f"localhost:{SECRET}", MASK),
        (SECRET, MASK),
        ("", MASK),
        # An unescaped "/", "?" or "#" in the password: the "@" lands in the path or query
        (f"redis://:pa/{SECRET}@h:6379/0", f"redis://{MASK}"),
        (f"mongodb://u:pa?{SECRET}@h/", f"mongodb://{MASK}"),
        (f"redis://:pa#{SECRET}@h/0", f"redis://{MASK}"),
        # "@" forgotten: the password reads as a port
        (f"redis://user:{SECRET}/0", f"redis://{MASK}"),
        (f"mongodb://user:{SECRET}", f"mongodb://{MASK}"),
        # Spaces, brackets or control characters where the host should be
        (f"redis://:x@host name:{SECRET}/0", f"redis://{MASK}"),
        (f"redis://:x@h\n{SECRET}/0", f"redis://{MASK}"),
    ],
)
def test_a_malformed_uri_is_masked_after_its_scheme(uri, shown):
    # When a URI that cannot be read with certainty is redacted
    # Then nothing after its scheme is shown
    assert redact_uri(uri) == shown


def test_a_sentinel_password_with_a_semicolon_stays_masked():
    # Given a sentinel URL whose password contains ";" (only ";scheme://" separates URLs)
    uri = "sentinel://:ab;cd@s1:26379/0;sentinel://:ab;cd@s2:26379/0?master_name=m"
    # Then no part of the password is shown
    shown = redact_uri(uri)
    assert "ab" not in shown and "cd" not in shown
    assert shown == f"sentinel://:{MASK}@s1:26379/0;sentinel://:{MASK}@s2:26379/0?master_name=m"
