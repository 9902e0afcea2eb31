/* What a compiled proxy-wasm filter costs Envoy: the reference the Python
 * plugin is measured against in bench/gateway_cost.py.
 *
 * Plugin configuration: a comma-separated list of ip:port. Each request is
 * pinned to the next one in turn through x-gateway-destination-endpoint (as
 * the plugin's round_robin does); an empty configuration pins nothing, so the
 * filter only costs what any wasm filter in the request path costs.
 * Built by bench/compiled_reference/build.py with zig cc (wasm32-wasi). */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

IMPORT(proxy_get_buffer_bytes)
int32_t proxy_get_buffer_bytes(int32_t type, int32_t start, int32_t size, char **data,
                               size_t *data_size);
IMPORT(proxy_replace_header_map_value)
int32_t proxy_replace_header_map_value(int32_t type, const char *key, size_t key_size,
                                       const char *value, size_t value_size);

enum { PLUGIN_CONFIGURATION = 3, REQUEST_HEADERS = 0, MAX_ENDPOINTS = 64 };
static const char OVERRIDE[] = "x-gateway-destination-endpoint";
static char *config;
static const char *endpoints[MAX_ENDPOINTS];
static size_t lengths[MAX_ENDPOINTS];
static uint32_t count, next;

__attribute__((export_name("proxy_abi_version_0_2_1"))) void proxy_abi_version_0_2_1(void) {}

__attribute__((export_name("proxy_on_memory_allocate"))) void *proxy_on_memory_allocate(size_t n) {
    return malloc(n);
}

__attribute__((export_name("proxy_on_vm_start"))) uint32_t proxy_on_vm_start(uint32_t root,
                                                                             uint32_t size) {
    return 1;
}

__attribute__((export_name("proxy_on_configure")))
uint32_t proxy_on_configure(uint32_t root, uint32_t size) {
    size_t got = 0;
    free(config);
    config = NULL;
    count = 0;
    if (size == 0 || proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, &config, &got) != 0)
        return 1;
    for (size_t start = 0, i = 0; i <= got && count < MAX_ENDPOINTS; i++) {
        if (i == got || config[i] == ',') {
            if (i > start) {
                endpoints[count] = config + start;
                lengths[count++] = i - start;
            }
            start = i + 1;
        }
    }
    return 1;
}

__attribute__((export_name("proxy_on_context_create")))
void proxy_on_context_create(uint32_t context, uint32_t parent) {}

__attribute__((export_name("proxy_on_request_headers")))
uint32_t proxy_on_request_headers(uint32_t context, uint32_t headers, uint32_t end_of_stream) {
    if (count) {
        uint32_t i = next++ % count;
        proxy_replace_header_map_value(REQUEST_HEADERS, OVERRIDE, sizeof OVERRIDE - 1,
                                       endpoints[i], lengths[i]);
    }
    return 0;
}

__attribute__((export_name("proxy_on_done"))) uint32_t proxy_on_done(uint32_t context) {
    return 1;
}

__attribute__((export_name("proxy_on_log"))) void proxy_on_log(uint32_t context) {}

__attribute__((export_name("proxy_on_delete"))) void proxy_on_delete(uint32_t context) {}
