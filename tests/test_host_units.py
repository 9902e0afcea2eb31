"""The test host's own parts: stubs generated from the ABI table, the RESP
reader, the process-wide shared store."""

import pytest

from proxywasm import abi_table
from tests.host import resp
from tests.host.emulator import HostEmulator
from tests.host.shared import SharedStore
from tests.host.stubs import HostStubs, is_implemented
from tests.host.wasm import check_module, load_module


def test_a_stub_exists_for_every_host_function_and_answers_unimplemented():
    stubs = HostStubs()
    for name, _, params in abi_table.HOST_FUNCTIONS:
        args = [b"" if kind == "in" else 0 for kind, _ in abi_table.in_params(params)]
        result = getattr(stubs, name)(*args)
        outs = abi_table.out_kinds(params)
        if outs:
            assert result[0] == abi_table.UNIMPLEMENTED and len(result) == 1 + len(outs)
        else:
            assert result == abi_table.UNIMPLEMENTED


def test_stubs_check_arity():
    with pytest.raises(TypeError):
        HostStubs().proxy_log(1)


@pytest.mark.parametrize("target", sorted(abi_table.TARGETS))
def test_the_emulator_implements_every_function_of_each_target(target):
    host = HostEmulator(target)
    missing = [name for name in host.host_functions() if not is_implemented(host, name)]
    assert missing == []
    offered = set(host.host_functions())
    higress = {name for name, host_set, _ in abi_table.HOST_FUNCTIONS
               if host_set == abi_table.HIGRESS}
    assert (offered & higress == set()) == (target == "envoy")


@pytest.mark.parametrize("reply", [
    b"+OK\r\n", b"-ERR unknown\r\n", b":42\r\n", b"$-1\r\n", b"$0\r\n\r\n",
    b"$5\r\nhe\r\nl\r\n", b"*-1\r\n", b"*0\r\n",
    b"*3\r\n:1\r\n*2\r\n:2\r\n*2\r\n$5\r\nthree\r\n*0\r\n$1\r\nx\r\n",
    b"%1\r\n+k\r\n*1\r\n:1\r\n", b"|1\r\n+a\r\n+b\r\n:7\r\n", b"_\r\n",
])
def test_reply_end_finds_the_end_whatever_the_split(reply):
    for cut in range(len(reply)):
        assert resp.reply_end(reply[:cut]) is None, cut
    assert resp.reply_end(reply) == len(reply)
    assert resp.reply_end(reply + b":9\r\n") == len(reply)


def test_reply_end_rejects_garbage():
    with pytest.raises(resp.ProtocolError):
        resp.reply_end(b"?what\r\n")


def test_shared_data_cas_semantics():
    store = SharedStore()
    assert store.get("", b"k") == (abi_table.NOT_FOUND, b"", 0)
    assert store.set("", b"k", b"v1", 12345) == abi_table.OK  # absent key: cas ignored
    status, value, cas = store.get("", b"k")
    assert (status, value) == (abi_table.OK, b"v1") and cas
    assert store.set("", b"k", b"v2", cas) == abi_table.OK
    assert store.set("", b"k", b"v3", cas) == abi_table.CAS_MISMATCH
    assert store.set("", b"k", b"v4", 0) == abi_table.OK
    assert store.get("", b"k")[1] == b"v4"
    assert store.get("other-vm-id", b"k")[0] == abi_table.NOT_FOUND


def test_queues_semantics():
    store = SharedStore()
    assert store.enqueue(99, b"x") == abi_table.NOT_FOUND
    assert store.dequeue(99) == (abi_table.NOT_FOUND, b"")
    queue_id = store.register_queue("", b"q", None, 1)
    assert store.register_queue("", b"q", None, 1) == queue_id
    assert store.resolve_queue("", b"q") == queue_id
    assert store.dequeue(queue_id) == (abi_table.EMPTY, b"")
    store.enqueue(queue_id, b"a")
    store.enqueue(queue_id, b"b")
    assert store.dequeue(queue_id) == (abi_table.OK, b"a")
    assert store.queue_items("", b"q") == [b"b"]


def test_a_module_must_fit_its_target(wasm_builds):
    envoy = load_module(wasm_builds.get("ai_load_balancer.main", "envoy"))
    higress = load_module(wasm_builds.get("ai_load_balancer.main", "higress"))
    check_module(envoy, "envoy")
    check_module(higress, "higress")
    with pytest.raises(ValueError, match="imports env.proxy_redis_call"):
        check_module(higress, "envoy")  # Envoy would refuse to load it
    with pytest.raises(ValueError, match="no export proxy_on_redis_call_response"):
        check_module(envoy, "higress")
