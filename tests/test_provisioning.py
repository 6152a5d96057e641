"""The kiosk file `o2o-bridge init` writes: rendered by the protocol package, loaded by
the kiosk. The bridge no longer imports the kiosk to check it, so this test does."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from cloud_bridge.cli import main
from kiosk.config import load_config as load_kiosk_config
from o2o_protocol.codes import b64url_encode, key_id, public_key_bytes
from o2o_protocol.provisioning import KioskProvisioning

GOLDEN = Path(__file__).parent / "golden" / "kiosk-k1.toml"


def _keys() -> dict[str, str]:
    public = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    return {key_id(public): b64url_encode(public_key_bytes(public))}


def _provisioning(**changes: object) -> KioskProvisioning:
    fields: dict[str, object] = {
        "store": "s1",
        "kiosk": "k1",
        "mqtt_url": "mqtts://broker.example:8883",
        "keys": _keys(),
        "join_secret": "a-join-secret",
        "path": Path("/srv/shop/kiosk-k1.toml"),
        **changes,
    }
    return KioskProvisioning.model_validate(fields)


def test_rendered_file_is_the_one_init_always_wrote() -> None:
    """Byte for byte the file the bridge's own template produced before it moved here."""
    assert _provisioning().render() == GOLDEN.read_text()


def test_rendered_file_loads_as_a_kiosk_config(tmp_path: Path) -> None:
    path = tmp_path / "kiosk-k1.toml"
    path.write_text(_provisioning(path=path, join_secret='a "quoted" secret\\').render())
    config = load_kiosk_config(path)
    assert (config.store, config.kiosk, config.mqtt.url) == (
        "s1",
        "k1",
        "mqtts://broker.example:8883",
    )
    assert config.keys == _keys()
    assert config.join_secret is not None
    assert config.join_secret.get_secret_value() == 'a "quoted" secret\\'
    assert config.data_dir == tmp_path / "kiosk-k1-data"
    assert (config.lockers.type, config.printer.type) == ("simulated", "simulated")


@pytest.mark.parametrize(
    "changes",
    [
        {"store": "bad store"},
        {"kiosk": ""},
        {"mqtt_url": "http://x"},
        {"keys": {}},
        {"keys": {"wrong-id": next(iter(_keys().values()))}},
        {"colour": "red"},
    ],
)
def test_bad_values_are_refused_before_anything_is_rendered(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _provisioning(**changes)


def test_init_writes_kiosk_files_the_kiosk_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = tmp_path / "shop"
    argv = ["init", "--dir", str(shop), "--store", "s1", "--kiosk", "k1", "--kiosk", "k2"]
    assert main([*argv, "--mqtt", "mqtts://broker.example:8883"]) == 0
    capsys.readouterr()
    k1, k2 = (load_kiosk_config(shop / f"kiosk-{k}.toml") for k in ("k1", "k2"))
    assert (k1.kiosk, k2.kiosk) == ("k1", "k2")
    assert k1.keys == k2.keys and len(k1.keys) == 1
    assert k1.join_secret == k2.join_secret  # one per store: the same phone, the same hash
    # Apart from the key, the secret and the path, the file is the golden one.
    text = (shop / "kiosk-k1.toml").read_text()
    golden = GOLDEN.read_text()
    [(kid, pub)] = k1.keys.items()
    [(gold_kid, gold_pub)] = _keys().items()
    assert k1.join_secret is not None
    expected = (
        golden.replace(gold_kid, kid)
        .replace(gold_pub, pub)
        .replace("a-join-secret", k1.join_secret.get_secret_value())
        .replace("/srv/shop/kiosk-k1.toml", str(shop / "kiosk-k1.toml"))
    )
    assert text == expected


def test_timezone_is_written_for_the_kiosk_to_read_its_hours_in(tmp_path: Path) -> None:
    path = tmp_path / "kiosk-k1.toml"
    path.write_text(_provisioning(path=path, timezone="Asia/Shanghai").render())
    assert load_kiosk_config(path).timezone == "Asia/Shanghai"
    with pytest.raises(ValidationError, match="unknown time zone"):
        _provisioning(timezone="Mars/Olympus")
