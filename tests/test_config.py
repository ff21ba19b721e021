"""Custom device models (models.toml): valid files load, every malformed one is refused with the fix named."""

import pytest

from passthru.config import DeviceModel, Paths, load_models
from passthru.errors import ConfigError
from passthru.host.root import HostRoot


def test_loads_models(tmp_path):
    f = tmp_path / "models.toml"
    f.write_text('[models.intel-qat]\nvendor = "8086"\ndevice = "37c8"\nkind = "accelerator"\n'
                 '[models.fpga]\nvendor = "0x1172"\ndevice = "e001"\n')
    models = load_models(str(f))
    assert models == [DeviceModel("intel-qat", 0x8086, 0x37C8, "accelerator"), DeviceModel("fpga", 0x1172, 0xE001,
                                                                                            "custom")]
    assert models[0].matches(0x8086, 0x37C8) and not models[0].matches(0x8086, 0x37C9)


def test_missing_file_is_no_models(tmp_path):
    assert load_models(str(tmp_path / "none.toml")) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("[models.gpu]\nvendor='10de'\ndevice='1b06'\n", "built-in kind"),
        ("[models.x]\nvendor='10dex'\ndevice='1b06'\n", "4-digit hex"),
        ("[models.x]\nvendor='10de'\n", "4-digit hex"),
        ("[models.Bad_Name]\nvendor='10de'\ndevice='1b06'\n", "lowercase"),
        ("[models.x]\nvendor='10de'\ndevice='1b06'\nkind='Has Space'\n", "kind must be"),
        ("models = 3\n", "table"),
        ("[models.x\n", "not valid TOML"),
    ],
)
def test_bad_files(tmp_path, text, message):
    f = tmp_path / "models.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_models(str(f))


def test_paths_follow_root_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("PASSTHRU_CONFIG_DIR", raising=False)
    monkeypatch.delenv("PASSTHRU_STATE_DIR", raising=False)
    p = Paths.for_root(HostRoot(tmp_path))
    assert p.config_dir == f"{tmp_path}/etc/passthru" and p.state_dir == f"{tmp_path}/var/lib/passthru"
    monkeypatch.setenv("PASSTHRU_STATE_DIR", "/srv/state")
    assert Paths.for_root(HostRoot(tmp_path)).state_dir == "/srv/state"
    assert Paths.for_root(HostRoot("/"), config_dir="/c").config_dir == "/c"
    assert Paths.for_root(HostRoot("/")).models_file == "/etc/passthru/models.toml"
