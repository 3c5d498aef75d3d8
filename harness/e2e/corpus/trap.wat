;; A deliberately crashing filter for the failure-policy groups of the corpus: it traps
;; (`unreachable`) in `proxy_on_request_headers` when the request carries `x-crash`, or in
;; `proxy_on_response_headers` when it carried `x-crash-response`. Otherwise it counts the
;; requests its VM has seen and reports the count in the response header `x-vm-requests`, so a
;; client can tell a reloaded VM (count restarts at 1) from the old one. (Requests of the corpus
;; are sequential, so one global remembers what the current stream asked for.)
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; 0..64: header names; 512/516: out-parameters; 600..: the decimal count.
  (data (i32.const 16) "x-crash")
  (data (i32.const 32) "x-vm-requests")
  (data (i32.const 48) "x-crash-response")
  (global $heap (mut i32) (i32.const 4096))
  (global $requests (mut i32) (i32.const 0))
  (global $crash_on_response (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  ;; Bump allocator: Envoy copies configuration and header values into the module through it.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.const 1)))))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; map type 0 = request headers; status 0 = Ok (the header is present).
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 16) (i32.const 7) (i32.const 512) (i32.const 516)))
      (then (unreachable)))
    (global.set $crash_on_response
      (i32.eqz (call $get_header (i32.const 0) (i32.const 48) (i32.const 16) (i32.const 512) (i32.const 516))))
    (global.set $requests (i32.add (global.get $requests) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (if (global.get $crash_on_response) (then (unreachable)))
    ;; map type 2 = response headers.
    (drop (call $add_header (i32.const 2) (i32.const 32) (i32.const 13)
      (i32.const 600) (call $decimal (global.get $requests) (i32.const 600))))
    (i32.const 0))
  ;; Writes $n in decimal at $dst; returns the length.
  (func $decimal (param $n i32) (param $dst i32) (result i32)
    (local $len i32) (local $rest i32) (local $i i32)
    (local.set $len (i32.const 1))
    (local.set $rest (local.get $n))
    (block $counted (loop $count
      (br_if $counted (i32.lt_u (local.get $rest) (i32.const 10)))
      (local.set $rest (i32.div_u (local.get $rest) (i32.const 10)))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (br $count)))
    (local.set $i (local.get $len))
    (local.set $rest (local.get $n))
    (loop $digit
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $dst) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $rest) (i32.const 10))))
      (local.set $rest (i32.div_u (local.get $rest) (i32.const 10)))
      (br_if $digit (i32.gt_u (local.get $i) (i32.const 0))))
    (local.get $len)))
