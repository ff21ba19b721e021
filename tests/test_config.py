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


# -- models.toml is written by a TOML writer: nothing `model add` accepts can make it unreadable --------------------
import tomllib  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from passthru.config import NO_CONTROL, add_model, remove_model, text_problem  # noqa: E402
from passthru.errors import UsageError  # noqa: E402

# any text, including control characters, lone surrogates (what a non-UTF-8 argv byte becomes), quotes, backslashes
_ANY = st.text(st.one_of(st.characters(exclude_categories=()), st.sampled_from('"\\\'\x01\n\r\t\x7f\x1b[]=#')),
               max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(description=_ANY)
def test_any_description_is_refused_or_round_trips(tmp_path, description):
    path = tmp_path / "models.toml"
    path.unlink(missing_ok=True)
    add_model(str(path), "keep", "10ee", "9038", description='earlier "one" \\ ok')
    try:
        add_model(str(path), "intel-qat", "8086", "37c8", kind="accelerator", description=description)
    except UsageError as e:
        assert text_problem(description) is not None and "--description" in str(e) and "\n" not in str(e)
    else:
        import re

        assert text_problem(description) is None and (description == "" or re.match(NO_CONTROL, description))
        assert {m.name: m.description for m in load_models(str(path))}["intel-qat"] == description
    tomllib.loads(path.read_text(encoding="utf-8"))  # the file always parses
    assert [m.description for m in load_models(str(path)) if m.name == "keep"] == ['earlier "one" \\ ok']
    remove_model(str(path), "keep")
    tomllib.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("field", ["name", "kind"])
def test_control_characters_in_names_and_kinds_are_refused(tmp_path, field):
    args = {"name": "qat", "kind": "accelerator"} | {field: "qat\n"}
    with pytest.raises(UsageError, match=r"control character '\\n'"):
        add_model(str(tmp_path / "models.toml"), args["name"], "8086", "37c8", kind=args["kind"])
    assert not (tmp_path / "models.toml").exists()


def test_a_trailing_newline_in_a_name_on_file_is_refused(tmp_path):
    f = tmp_path / "models.toml"
    f.write_text('[models."qat\\n"]\nvendor = "8086"\ndevice = "37c8"\n')
    with pytest.raises(ConfigError, match="names are lowercase"):
        load_models(str(f))


@pytest.mark.parametrize("raw, message", [
    (b'[models.x]\nvendor = "8086"\ndevice = "37c8"\ndescription = "QAT\x01card"\n',
     r"not valid TOML \(Illegal character '\\x01' \(at line 4, column 19\)\); fix that line"),
    (b'[models.x]\nvendor = "8086"\ndevice = "37c8"\ndescription = "QAT\xffcard"\n',
     r"not UTF-8 text \(byte 0xff on line 4\); fix that line"),
    (b'[models.x]\nvendor = "8086"\ndevice = "37c8"\ndescription = 3\n', "description must be a string"),
])
def test_unreadable_files_name_the_file_and_the_line(tmp_path, raw, message):
    f = tmp_path / "models.toml"
    f.write_bytes(raw)
    with pytest.raises(ConfigError, match=message) as e:
        load_models(str(f))
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_directories_that_are_files_are_config_errors(tmp_path):
    (tmp_path / "etc").write_text("")
    (tmp_path / "state").symlink_to(tmp_path / "state")
    p = Paths(str(tmp_path / "etc"), str(tmp_path / "state"))
    with pytest.raises(ConfigError, match=r"etc is not a directory; move it away, or pass --config-dir$"):
        p.models_file
    with pytest.raises(ConfigError, match=r"state: too many levels of symbolic links.*pass --state-dir$"):
        p.state("passthru.db")
    assert Paths(str(tmp_path / "none"), str(tmp_path / "none2")).state("x") == str(tmp_path / "none2" / "x")
