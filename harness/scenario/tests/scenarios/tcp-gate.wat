;; tcp-gate: a network filter (envoy.filters.network.wasm) in plain WebAssembly text, for the
;; scenario files beside it.
;; - each connection counts in `tcp_gate.connections`; its client address (`source.address`),
;;   when the host has one, is logged as `from <address>`;
;; - a client from 10.9.0.0/16 is denied: its first bytes close the connection
;;   (`proxy_close_stream`), logged `denied`; one from 10.8.0.0/16 is stopped when it is
;;   accepted (StopIteration from `proxy_on_new_connection`, logged `stop`): Envoy connects no
;;   upstream and hands the filter nothing more;
;; - client bytes are wrapped in `<`...`>` on their way up; bytes ending in `+` are held
;;   (StopIteration, logged `hold`) until more arrive; bytes holding `CLOSE` close the connection;
;; - upstream bytes get a `u:` prefix on their way down;
;; - each side's close is logged with the peer type Envoy gives (`downstream closed 2`).
(module
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $proxy_set_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_close_stream" (func $proxy_close_stream (param i32) (result i32)))
  (import "env" "proxy_get_property" (func $proxy_get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $proxy_define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $proxy_increment_metric (param i32 i64) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $metric (mut i32) (i32.const 0))
  (global $denied (mut i32) (i32.const 0))
  ;; Strings.
  (data (i32.const 1024) "tcp_gate.connections") ;; 20
  (data (i32.const 1056) "source\00address")      ;; 14
  (data (i32.const 1088) "from ")                 ;; 5
  (data (i32.const 1104) "10.9.")                 ;; 5
  (data (i32.const 1120) "denied")                ;; 6
  (data (i32.const 1136) "hold")                  ;; 4
  (data (i32.const 1152) "CLOSE")                 ;; 5
  (data (i32.const 1168) "<")
  (data (i32.const 1172) ">")
  (data (i32.const 1176) "u:")                    ;; 2
  (data (i32.const 1184) "downstream closed 0")   ;; 19, the digit at 1202
  (data (i32.const 1216) "upstream closed 0")     ;; 17, the digit at 1232
  (data (i32.const 1248) "log")                   ;; 3
  (data (i32.const 1256) "10.8.")                 ;; 5
  (data (i32.const 1264) "stop")                  ;; 4
  (func $malloc (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1))))))
    (local.get $p))
  (func $info (param $p i32) (param $len i32)
    (drop (call $proxy_log (i32.const 2) (local.get $p) (local.get $len))))
  ;; 1 when ($p, $len) holds "CLOSE".
  (func $has_close (param $p i32) (param $len i32) (result i32)
    (local $i i32)
    (block $done (loop $next
      (br_if $done (i32.gt_u (i32.add (local.get $i) (i32.const 5)) (local.get $len)))
      (if (i32.and
            (i32.eq (i32.load (i32.add (local.get $p) (local.get $i))) (i32.load (i32.const 1152)))
            (i32.eq (i32.load8_u (i32.add (local.get $p) (i32.add (local.get $i) (i32.const 4)))) (i32.const 69)))
        (then (return (i32.const 1))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $proxy_define_metric (i32.const 0) (i32.const 1024) (i32.const 20) (i32.const 520)))
    (global.set $metric (i32.load (i32.const 520)))
    (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_new_connection") (param $ctx i32) (result i32)
    (local $p i32) (local $len i32)
    (drop (call $proxy_increment_metric (global.get $metric) (i64.const 1)))
    (global.set $denied (i32.const 0))
    (if (i32.eqz (call $proxy_get_property (i32.const 1056) (i32.const 14) (i32.const 512) (i32.const 516)))
      (then
        (local.set $p (i32.load (i32.const 512)))
        (local.set $len (i32.load (i32.const 516)))
        ;; "from " then the address, at 4096.
        (memory.copy (i32.const 4096) (i32.const 1088) (i32.const 5))
        (memory.copy (i32.const 4101) (local.get $p) (local.get $len))
        (call $info (i32.const 4096) (i32.add (local.get $len) (i32.const 5)))
        (if (i32.and
              (i32.ge_u (local.get $len) (i32.const 5))
              (i32.and
                (i32.eq (i32.load (local.get $p)) (i32.load (i32.const 1104)))
                (i32.eq (i32.load8_u offset=4 (local.get $p)) (i32.const 46))))
          (then (global.set $denied (i32.const 1))))
        (if (i32.and
              (i32.ge_u (local.get $len) (i32.const 5))
              (i32.and
                (i32.eq (i32.load (local.get $p)) (i32.load (i32.const 1256)))
                (i32.eq (i32.load8_u offset=4 (local.get $p)) (i32.const 46))))
          (then
            (call $info (i32.const 1264) (i32.const 4))
            (return (i32.const 1))))))
    (i32.const 0))
  (func (export "proxy_on_downstream_data") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
    (local $p i32)
    (if (i32.eqz (local.get $len)) (then (return (i32.const 0))))
    (if (global.get $denied)
      (then
        (call $info (i32.const 1120) (i32.const 6))
        (drop (call $proxy_close_stream (i32.const 2)))
        (return (i32.const 0))))
    (drop (call $proxy_get_buffer_bytes (i32.const 2) (i32.const 0) (local.get $len) (i32.const 512) (i32.const 516)))
    (local.set $p (i32.load (i32.const 512)))
    (if (i32.eq (i32.load8_u (i32.add (local.get $p) (i32.sub (local.get $len) (i32.const 1)))) (i32.const 43))
      (then
        (call $info (i32.const 1136) (i32.const 4))
        (return (i32.const 1))))
    (if (call $has_close (local.get $p) (local.get $len))
      (then
        (drop (call $proxy_close_stream (i32.const 2)))
        (return (i32.const 0))))
    (drop (call $proxy_set_buffer_bytes (i32.const 2) (i32.const 0) (i32.const 0) (i32.const 1168) (i32.const 1)))
    (drop (call $proxy_set_buffer_bytes (i32.const 2) (i32.add (local.get $len) (i32.const 1)) (i32.const 0) (i32.const 1172) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_upstream_data") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $len)) (then (return (i32.const 0))))
    (drop (call $proxy_set_buffer_bytes (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 1176) (i32.const 2)))
    (i32.const 0))
  (func (export "proxy_on_downstream_connection_close") (param $ctx i32) (param $peer i32)
    (i32.store8 (i32.const 1202) (i32.add (i32.const 48) (local.get $peer)))
    (call $info (i32.const 1184) (i32.const 19)))
  (func (export "proxy_on_upstream_connection_close") (param $ctx i32) (param $peer i32)
    (i32.store8 (i32.const 1232) (i32.add (i32.const 48) (local.get $peer)))
    (call $info (i32.const 1216) (i32.const 17)))
  (func (export "proxy_on_log") (param $ctx i32)
    (call $info (i32.const 1248) (i32.const 3)))
  (func (export "proxy_on_done") (param $ctx i32) (result i32) (i32.const 1))
)
