// The proxy-wasm ABI 0.2.1, written by hand against Go's standard library only:
// //go:wasmimport for the host's functions, //go:wasmexport for the callbacks.

package main

import "unsafe"

//go:wasmimport env proxy_log
func proxyLog(level uint32, message unsafe.Pointer, size uint32) uint32

//go:wasmimport env proxy_get_header_map_value
func proxyGetHeaderMapValue(mapType uint32, key unsafe.Pointer, keySize uint32, value unsafe.Pointer, valueSize unsafe.Pointer) uint32

//go:wasmimport env proxy_add_header_map_value
func proxyAddHeaderMapValue(mapType uint32, key unsafe.Pointer, keySize uint32, value unsafe.Pointer, valueSize uint32) uint32

//go:wasmimport env proxy_send_local_response
func proxySendLocalResponse(status uint32, details unsafe.Pointer, detailsSize uint32, body unsafe.Pointer, bodySize uint32, headers unsafe.Pointer, headersSize uint32, grpcStatus int32) uint32

//go:wasmimport env proxy_http_call
func proxyHTTPCall(upstream unsafe.Pointer, upstreamSize uint32, headers unsafe.Pointer, headersSize uint32, body unsafe.Pointer, bodySize uint32, trailers unsafe.Pointer, trailersSize uint32, timeoutMillis uint32, token unsafe.Pointer) uint32

//go:wasmimport env proxy_get_buffer_bytes
func proxyGetBufferBytes(bufferType uint32, start uint32, length uint32, data unsafe.Pointer, size unsafe.Pointer) uint32

//go:wasmimport env proxy_continue_stream
func proxyContinueStream(streamType uint32) uint32

//go:wasmimport env proxy_define_metric
func proxyDefineMetric(metricType uint32, name unsafe.Pointer, nameSize uint32, id unsafe.Pointer) uint32

//go:wasmimport env proxy_increment_metric
func proxyIncrementMetric(id uint32, offset int64) uint32

//go:wasmimport env proxy_set_effective_context
func proxySetEffectiveContext(contextID uint32) uint32

//go:wasmimport env proxy_call_foreign_function
func proxyCallForeignFunction(name unsafe.Pointer, nameSize uint32, arguments unsafe.Pointer, argumentsSize uint32, results unsafe.Pointer, resultsSize unsafe.Pointer) uint32

const (
	mapRequestHeaders      = 0
	mapResponseHeaders     = 2
	mapCallResponseHeaders = 6
	bufferCallResponseBody = 4
	streamRequest          = 0
	metricCounter          = 0
	logInfo                = 2
)

// Memory the host asked for, kept reachable until the module has read it.
var allocations = map[uintptr][]byte{}

//go:wasmexport proxy_on_memory_allocate
func proxyOnMemoryAllocate(size uint32) uint32 {
	buffer := make([]byte, size+1)
	pointer := uintptr(unsafe.Pointer(&buffer[0]))
	allocations[pointer] = buffer
	return uint32(pointer)
}

// taken copies out (and releases) what the host wrote into memory it allocated.
func taken(pointer, size uint32) []byte {
	buffer, ok := allocations[uintptr(pointer)]
	if !ok {
		return nil
	}
	delete(allocations, uintptr(pointer))
	out := make([]byte, size)
	copy(out, buffer[:size])
	return out
}

func bytesPointer(data []byte) unsafe.Pointer {
	if len(data) == 0 {
		return nil
	}
	return unsafe.Pointer(&data[0])
}

func logInfof(message string) {
	data := []byte(message)
	proxyLog(logInfo, bytesPointer(data), uint32(len(data)))
}

func header(mapType uint32, name string) string {
	key := []byte(name)
	var pointer, size uint32
	if proxyGetHeaderMapValue(mapType, bytesPointer(key), uint32(len(key)), unsafe.Pointer(&pointer), unsafe.Pointer(&size)) != 0 {
		return ""
	}
	return string(taken(pointer, size))
}

func addHeader(mapType uint32, name, value string) {
	key, data := []byte(name), []byte(value)
	proxyAddHeaderMapValue(mapType, bytesPointer(key), uint32(len(key)), bytesPointer(data), uint32(len(data)))
}

// serializeHeaders encodes pairs as proxy-wasm header maps: count, sizes, then NUL-terminated bytes.
func serializeHeaders(pairs [][2]string) []byte {
	out := make([]byte, 0, 64)
	put := func(value int) {
		out = append(out, byte(value), byte(value>>8), byte(value>>16), byte(value>>24))
	}
	put(len(pairs))
	for _, pair := range pairs {
		put(len(pair[0]))
		put(len(pair[1]))
	}
	for _, pair := range pairs {
		out = append(out, pair[0]...)
		out = append(out, 0)
		out = append(out, pair[1]...)
		out = append(out, 0)
	}
	return out
}

func sendLocalResponse(status uint32, body string, headers [][2]string) uint32 {
	data := []byte(body)
	serialized := serializeHeaders(headers)
	return proxySendLocalResponse(status, nil, 0, bytesPointer(data), uint32(len(data)), bytesPointer(serialized), uint32(len(serialized)), -1)
}

func httpCall(cluster string, headers [][2]string, timeoutMillis uint32) (uint32, uint32) {
	name := []byte(cluster)
	serialized := serializeHeaders(headers)
	trailers := serializeHeaders(nil)
	var token uint32
	status := proxyHTTPCall(bytesPointer(name), uint32(len(name)), bytesPointer(serialized), uint32(len(serialized)), nil, 0, bytesPointer(trailers), uint32(len(trailers)), timeoutMillis, unsafe.Pointer(&token))
	return token, status
}

func callResponseBody(size uint32) string {
	if size == 0 {
		return ""
	}
	var pointer, length uint32
	if proxyGetBufferBytes(bufferCallResponseBody, 0, size, unsafe.Pointer(&pointer), unsafe.Pointer(&length)) != 0 {
		return ""
	}
	return string(taken(pointer, length))
}

func defineCounter(name string) uint32 {
	data := []byte(name)
	var id uint32
	proxyDefineMetric(metricCounter, bytesPointer(data), uint32(len(data)), unsafe.Pointer(&id))
	return id
}

// callForeign calls one of the host's foreign functions: its result, and the status (0: Ok).
func callForeign(function string, arguments []byte) ([]byte, uint32) {
	name := []byte(function)
	var pointer, size uint32
	status := proxyCallForeignFunction(bytesPointer(name), uint32(len(name)), bytesPointer(arguments), uint32(len(arguments)), unsafe.Pointer(&pointer), unsafe.Pointer(&size))
	if status != 0 {
		return nil, status
	}
	return taken(pointer, size), 0
}
