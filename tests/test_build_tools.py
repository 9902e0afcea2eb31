"""The build tool's pure parts: shim generation from the ABI table, and freezing."""

import marshal
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "build"))

import freeze  # noqa: E402
import gen_shim  # noqa: E402
import precompile  # noqa: E402
from proxywasm import abi_table  # noqa: E402

HIGRESS_ONLY = ("proxy_get_upstream_hosts", "proxy_set_upstream_override_host",
                "proxy_redis_init", "proxy_redis_call")


def _generated(target):
    hosts, callbacks = abi_table.host_functions(target), abi_table.callbacks(target)
    return (gen_shim.header(hosts, callbacks, "x.main")
            + gen_shim.source(hosts, callbacks, abi_table.TARGETS[target][1]))


def test_envoy_target_imports_no_higress_function():
    text = _generated("envoy")
    for name in HIGRESS_ONLY:
        assert f'import_name("{name}")' not in text
    assert 'export_name("proxy_on_redis_call_response")' not in text
    assert 'export_name("proxy_abi_version_0_2_1")' in text


def test_higress_target_imports_its_extensions_and_marker():
    text = _generated("higress")
    for name in HIGRESS_ONLY:
        assert f'import_name("{name}")' in text
    assert 'export_name("proxy_on_redis_call_response")' in text
    assert 'export_name("proxy_abi_version_0_2_100")' in text


@pytest.mark.parametrize("target", sorted(abi_table.TARGETS))
def test_every_callback_and_host_function_is_generated(target):
    text = _generated(target)
    for name, _, _ in abi_table.callbacks(target):
        assert f'export_name("{name}")' in text
    for name, _ in abi_table.host_functions(target):
        assert f'{{"{name}", (PyCFunction)' in text


def test_callback_arity_fits_the_trampoline():
    widest = max(len(params) for _, _, params, _ in abi_table.CALLBACKS)
    with open(os.path.join(ROOT, "host_shim", "shim.h")) as f:
        limit = int(re.search(r"#define SHIM_MAX_CALLBACK_ARGS (\d+)", f.read()).group(1))
    assert widest <= limit


def test_out_params_come_back_after_the_status():
    assert abi_table.out_kinds(dict((n, p) for n, _, p in abi_table.HOST_FUNCTIONS)[
        "proxy_get_shared_data"]) == ["out", "out_u32"]


def _tree(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_collect_follows_absolute_relative_and_parent_imports(tmp_path):
    root = _tree(tmp_path, {
        "app/__init__.py": "",
        "app/main.py": "from . import helper\nfrom .sub import deep\nimport json\n",
        "app/helper.py": "def f():\n    import app.lazy\n",
        "app/lazy.py": "",
        "app/sub/__init__.py": "",
        "app/sub/deep.py": "from ..helper import f\n",
        "json/__init__.py": "from .decoder import x\n",
        "json/decoder.py": "try:\n    import _missing_accelerator\nexcept ImportError:\n    pass\n",
    })
    found = freeze.collect(["app.main"], [root], builtins=set())
    assert set(found) == {"app", "app.main", "app.helper", "app.lazy", "app.sub",
                          "app.sub.deep", "json", "json.decoder"}
    assert found["app.sub"][1] is True and found["app.main"][1] is False


def test_collect_skips_builtins_deep_frozen_and_excluded(tmp_path):
    root = _tree(tmp_path, {
        "app.py": "import os, _json, subprocess, logging.handlers\n",
        "subprocess.py": "", "logging/__init__.py": "", "logging/handlers.py": "",
        "_json.py": "",
    })
    found = freeze.collect(["app"], [root], builtins={"_json"})
    assert set(found) == {"app"}


def test_collect_rejects_a_missing_entry(tmp_path):
    with pytest.raises(SystemExit, match="entry modules not found"):
        freeze.collect(["nope.main"], [str(tmp_path)], builtins=set())


def test_frozen_code_names_files_relative_to_their_root(tmp_path):
    root = _tree(tmp_path, {"pkg/mod.py": "def f():\n    raise ValueError\n"})
    data = freeze.compile_module("pkg.mod", os.path.join(root, "pkg", "mod.py"), root, 2)
    code = marshal.loads(data)
    assert code.co_filename == os.path.join("pkg", "mod.py")


def test_frozen_table_lists_every_module_with_its_package_flag(tmp_path):
    root = _tree(tmp_path, {"pkg/__init__.py": "", "pkg/mod.py": "X = 1\n"})
    found = freeze.collect(["pkg.mod"], [root], builtins=set())
    text = freeze.frozen_c(found, [root], stdlib="/nowhere")
    assert '{"pkg", m0, ' in text and ', 1, NULL},' in text
    assert '{"pkg.mod", m1, ' in text
    assert text.rstrip().endswith("};")


def test_the_plugin_keeps_its_docstrings_the_standard_library_not(tmp_path):
    """A dataclass without a docstring has its __doc__ built by inspect at
    start: the plugin's docstrings stay."""
    source = '"""Doc."""\nassert False\n'
    plugin = _tree(tmp_path / "plugin", {"mine.py": source})
    stdlib = _tree(tmp_path / "stdlib", {"theirs.py": source})
    found = freeze.collect(["mine", "theirs"], [plugin, stdlib], builtins=set())
    text = freeze.frozen_c(found, [plugin, stdlib], stdlib)
    mine, theirs = (text.split(f'static const unsigned char m{i}[')[1].split(";")[0]
                    for i in (0, 1))
    assert "\\x44\\x6f\\x63\\x2e" in mine  # "Doc." kept
    assert "\\x44\\x6f\\x63\\x2e" not in theirs


def test_the_source_modules_compile_at_import_is_compiled_by_the_build(tmp_path):
    """What a dataclass and a namedtuple compile when their module is imported
    is found, compiled, and looked up by the key the VM computes."""
    root = _tree(tmp_path, {"shapes.py": (
        "import collections, dataclasses\n"
        "@dataclasses.dataclass(frozen=True)\n"
        "class Point:\n    x: int\n"
        "Pair = collections.namedtuple('Pair', 'left right')\n")})
    compiled = precompile.record([root], ["shapes"])
    sources = [source for source, _, _, _ in compiled]
    assert any("def __init__(self" in s and "_type_x" in s for s in sources)
    assert "lambda _cls, left, right: _tuple_new(_cls, (left, right))" in sources
    namespace = {}
    exec(precompile.module_source(compiled), namespace)
    for item in compiled:
        code = marshal.loads(namespace["DATA"][precompile.key(*item)])
        assert code.co_filename == item[1]


def test_this_python_writes_the_wasm_bytecode():
    freeze.check_python()  # raises SystemExit on a Python other than 3.11


def _oci_blob(layout, descriptor):
    return (layout / "blobs" / "sha256" / descriptor["digest"].split(":")[1]).read_bytes()


HIGRESS_LAYERS = [  # hgctl plugin build's order; Istio's fetcher takes the last layer
    ("spec.yaml", "application/vnd.module.wasm.spec.v1+yaml"),
    ("README.md", "application/vnd.module.wasm.doc.v1+markdown"),
    ("README_ZH.md", "application/vnd.module.wasm.doc.v1.zh+markdown"),
    ("README_EN.md", "application/vnd.module.wasm.doc.v1.en+markdown"),
    ("plugin.tar.gz", "application/vnd.oci.image.layer.v1.tar+gzip"),
]


def test_higress_image_has_hgctl_layers_and_is_reproducible(tmp_path):
    import gzip
    import io
    import json
    import tarfile

    import yaml
    sys.path.insert(0, os.path.join(ROOT, "higress"))
    import build_image
    wasm = tmp_path / "plugin-in.wasm"
    wasm.write_bytes(b"\0asm\x01\0\0\0" + b"x" * 1000)
    first = build_image.build(str(wasm), str(tmp_path / "a"), "t", version="9.8.7")
    second = build_image.build(str(wasm), str(tmp_path / "b"), "t", version="9.8.7")
    assert first["digest"] == second["digest"]
    layout = tmp_path / "a"
    manifest = json.loads(_oci_blob(layout, first))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.unknown.config.v1+json"
    assert _oci_blob(layout, manifest["config"]) == b"{}"
    assert [(layer["annotations"]["org.opencontainers.image.title"], layer["mediaType"])
            for layer in manifest["layers"]] == HIGRESS_LAYERS
    blobs = {layer["annotations"]["org.opencontainers.image.title"]: _oci_blob(layout, layer)
             for layer in manifest["layers"]}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blobs["plugin.tar.gz"]))) as tar:
        assert tar.getnames() == ["plugin.wasm"]
        assert tar.extractfile("plugin.wasm").read() == wasm.read_bytes()
    with open(os.path.join(ROOT, "README.md"), "rb") as f:
        assert blobs["README.md"] == blobs["README_EN.md"] == f.read()
    with open(os.path.join(ROOT, "README.zh-CN.md"), "rb") as f:
        assert blobs["README_ZH.md"] == f.read()
    document = yaml.safe_load(blobs["spec.yaml"])
    assert document == build_image.spec.spec("9.8.7")
    assert document["info"]["name"] == "ai-load-balancer"
    assert document["info"]["version"] == "9.8.7"
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "t"
    third = build_image.build(str(wasm), str(tmp_path / "c"), "t", version="9.8.8")
    assert third["digest"] != first["digest"]


def test_higress_spec_yaml_describes_every_config_field():
    import yaml
    sys.path.insert(0, os.path.join(ROOT, "higress"))
    import spec
    from ai_load_balancer import config_fields
    document = yaml.safe_load(spec.spec_yaml("1.2.3"))
    assert document["apiVersion"] == "1.0.0"
    assert document["info"]["category"] == "ai"
    assert document["spec"]["phase"] == "UNSPECIFIED_PHASE"
    assert document["spec"]["priority"] == 50
    schema = document["spec"]["configSchema"]["openAPIV3Schema"]
    assert document["spec"]["routeConfigSchema"]["openAPIV3Schema"] == schema
    assert schema["type"] == "object" and schema["required"] == ["lb_policy"]
    assert schema["properties"]["lb_type"]["enum"] == list(config_fields.LB_TYPES)
    assert schema["properties"]["lb_type"]["default"] == "endpoint"
    policies = schema["properties"]["lb_policy"]["enum"]
    for name in ("endpoint_metrics", "metrics_based", "global_least_request", "prefix_cache",
                 "cluster_metrics"):
        assert name in policies
    for names in config_fields.LB_TYPES.values():
        assert set(names) <= set(policies)
    assert set(config_fields.ALIASES) <= set(policies)
    types = {"int": "integer", "number": "number", "bool": "boolean", "string": "string",
             "strings": "array", "object": "object", "map": "object", "list": "array"}

    def check(properties, fields):
        assert list(properties) == [field.name for field in fields]
        for field in fields:
            prop = properties[field.name]
            assert prop["type"] == types[field.kind], field.name
            if field.default is None:
                assert "default" not in prop, field.name
            else:
                assert prop["default"] == field.default, field.name
            assert prop.get("minimum") == field.low and prop.get("maximum") == field.high
            assert prop.get("enum", []) == list(field.choices)
            assert field.doc in prop["description"]
            assert "policies: " + ", ".join(field.policies) in prop["description"]
        return properties

    lb_config = check(schema["properties"]["lb_config"]["properties"],
                      config_fields.LB_CONFIG_FIELDS)
    check(lb_config["healthCheck"]["properties"], config_fields.HEALTH_FIELDS)
    maps = [f.name for f in config_fields.LB_CONFIG_FIELDS if f.kind == "map"]
    assert all(lb_config[name]["additionalProperties"] == {"type": "integer"} for name in maps)
