"""The proxy-wasm test host: runs the plugin natively or as .wasm against one
emulated Envoy / Higress host.

    stubs.py          HostStubs: one method per ABI host function, generated from
                      plugin/proxywasm/abi_table.py, all answering Unimplemented
    hostfunctions.py  HostFunctions(HostStubs): the host functions, as Envoy 1.40
                      and Higress behave (bytes in, (status, *outs) out)
    emulator.py       HostEmulator: state, effective context, and the driver API
                      for tests (start_plugin, init_http_context, call_on_*, ...)
    callouts.py       run_callouts(): http_call / redis_call performed for real;
                      Higress's Redis client per cluster per worker (init
                      semantics, 3 ms / 1024-byte write buffer, reply statuses)
    upstream.py       the HTTP/1.1 and Redis clients those callouts use
    resp.py           a RESP reader that finds where one reply ends
    shared.py         SharedStore: process-wide shared data, queues, metrics
    model.py          ABI constants, header maps, streams, pending callouts
    native.py         NativePlugin: the plugin imported into this CPython (a fresh
                      "VM" each time) with abi.bind() to the target's functions
    wasm.py           WasmPlugin: the built .wasm in wasmtime, every env.proxy_*
                      import marshalled from abi_table to the same emulator

Both transports offer `call(callback_name, *int_args) -> int | None`; the
fixtures in tests/conftest.py run each test body with both.
"""
