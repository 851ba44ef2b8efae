// relay's JSON value encoding (docs/protocol.md, "JSON values"; relay/codecs/json.py).
//
// Plain JSON values stand for themselves.  Everything else is an object with
// one "$" key:  {"$ndarray": [dtype, shape, base64]}, {"$scalar": [dtype, base64]},
// {"$tuple": [...]}, {"$bytes": base64}, {"$float": "inf"|"-inf"|"nan"},
// {"$map": [[key, value], ...]}, {"$graph": [nodes, edges, edge_links]}.
//
// JavaScript stand-ins:  NDArray (dtype, shape, data: a TypedArray), Tuple (an
// Array subclass), Uint8Array for bytes, Map for $map, Infinity/NaN for $float.
// A $scalar decodes to a Number (a BigInt for a 64-bit integer beyond 2^53, a
// boolean for "|b1"); wrap a number in Scalar to send it with a dtype.

import { ProtocolError } from "./errors.js";

const TYPED = {
  "|b1": Uint8Array, "|u1": Uint8Array, "|i1": Int8Array,
  "<u2": Uint16Array, "<i2": Int16Array, "<u4": Uint32Array, "<i4": Int32Array,
  "<u8": BigUint64Array, "<i8": BigInt64Array,
  "<f2": Uint16Array, "<f4": Float32Array, "<f8": Float64Array,
};
const ALIASES = { "bool": "|b1", "uint8": "|u1", "int8": "|i1", "uint16": "<u2", "int16": "<i2",
  "uint32": "<u4", "int32": "<i4", "uint64": "<u8", "int64": "<i8", "float16": "<f2",
  "float32": "<f4", "float64": "<f8" };

/** numpy's dtype.str for a dtype name ("float32" -> "<f4"); dtype strings pass through. */
export function dtypeStr(dtype) {
  return ALIASES[dtype] ?? dtype;
}

function itemsize(dtype) {
  const size = Number.parseInt(dtype.slice(2), 10);
  if (!Number.isInteger(size) || size <= 0) throw new ProtocolError(`unknown dtype ${dtype}`);
  return dtype[1] === "U" ? 4 * size : size;
}

/** An n-dimensional array: numpy's dtype string, shape, and C-order data in a TypedArray. */
export class NDArray {
  constructor(dtype, shape, data) {
    this.dtype = dtypeStr(dtype);
    this.shape = Array.from(shape);
    const count = this.shape.reduce((a, b) => a * b, 1);
    const Typed = TYPED[this.dtype];
    if (data === undefined) {
      data = Typed ? new Typed(count) : new Uint8Array(count * itemsize(this.dtype));
    } else if (Array.isArray(data)) {
      if (!Typed) throw new ProtocolError(`cannot build a ${this.dtype} array from a list`);
      data = Typed === BigInt64Array || Typed === BigUint64Array
        ? Typed.from(data, (x) => BigInt(x)) : Typed.from(data, (x) => Number(x));
    }
    this.data = data;
    const expected = count * itemsize(this.dtype);
    if (data.byteLength !== expected) {
      throw new ProtocolError(`array ${this.dtype} ${JSON.stringify(this.shape)} needs ` +
        `${expected} bytes, data has ${data.byteLength}`);
    }
  }

  get size() { return this.shape.reduce((a, b) => a * b, 1); }

  /** A nested Array of Numbers (BigInts for 64-bit integers), like numpy's tolist(). */
  toList() {
    const flat = Array.from(this.data, this.dtype === "|b1" ? (x) => x !== 0 : (x) => x);
    const build = (offset, dims) => {
      if (dims.length === 0) return flat[offset];
      const [n, ...rest] = dims;
      const stride = rest.reduce((a, b) => a * b, 1);
      return Array.from({ length: n }, (_, i) => build(offset + i * stride, rest));
    };
    return build(0, this.shape);
  }
}

/** A numpy scalar to send with its dtype (e.g. new Scalar("<i8", 3)). */
export class Scalar {
  constructor(dtype, value) {
    this.dtype = dtypeStr(dtype);
    this.value = value;
  }
}

/** A Python tuple (a JSON array is a list). */
export class Tuple extends Array {
  static of(...items) {
    const tuple = new Tuple();
    tuple.push(...items);
    return tuple;
  }
}

// -- base64 of bytes (Node's Buffer when there, otherwise atob/btoa) --------------

const NodeBuffer = globalThis.Buffer;

export function toBase64(bytes) {
  if (NodeBuffer) return NodeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

export function fromBase64(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) {
    throw new ProtocolError("malformed base64");
  }
  if (NodeBuffer) {
    const buffer = NodeBuffer.from(text, "base64");
    const copy = new Uint8Array(buffer.byteLength);  // own, aligned memory
    copy.set(buffer);
    return copy;
  }
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function bytesOf(typed) {
  return new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
}

function typedFrom(dtype, bytes) {
  if (dtype[0] === ">") throw new ProtocolError(`big-endian dtype ${dtype} is not supported`);
  const Typed = TYPED[dtype];
  if (!Typed) return bytes;  // strings and other dtypes: the raw bytes
  if (bytes.byteLength % Typed.BYTES_PER_ELEMENT !== 0) {
    throw new ProtocolError(`${bytes.byteLength} bytes are not a whole number of ${dtype}`);
  }
  return new Typed(bytes.buffer, bytes.byteOffset, bytes.byteLength / Typed.BYTES_PER_ELEMENT);
}

// -- encode / decode ---------------------------------------------------------

/** The JSON-ready tree for a JavaScript value (see the module comment). */
export function toJsonValue(value) {
  if (value === null || value === undefined) return null;
  switch (typeof value) {
    case "boolean":
    case "string":
      return value;
    case "number":
      if (Number.isFinite(value)) return value;
      return { $float: Number.isNaN(value) ? "nan" : value > 0 ? "inf" : "-inf" };
    case "bigint":
      if (value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER)) {
        return Number(value);
      }
      return toJsonValue(new Scalar(value < 0n ? "<i8" : "<u8", value));
    default:
  }
  if (value instanceof NDArray) {
    return { $ndarray: [value.dtype, Array.from(value.shape), toBase64(bytesOf(value.data))] };
  }
  if (value instanceof Scalar) {
    const Typed = TYPED[value.dtype];
    if (!Typed) throw new ProtocolError(`cannot send a scalar of dtype ${value.dtype}`);
    const big = Typed === BigInt64Array || Typed === BigUint64Array;
    const v = typeof value.value === "boolean" ? Number(value.value) : value.value;
    return { $scalar: [value.dtype, toBase64(bytesOf(Typed.of(big ? BigInt(v) : Number(v))))] };
  }
  if (value instanceof Tuple) return { $tuple: Array.from(value, toJsonValue) };
  if (Array.isArray(value)) return value.map(toJsonValue);
  if (value instanceof Uint8Array) return { $bytes: toBase64(value) };
  if (ArrayBuffer.isView(value)) {
    throw new ProtocolError("wrap typed arrays in NDArray to send them with a dtype and shape");
  }
  if (value instanceof Map) {
    return { $map: Array.from(value, ([k, v]) => [toJsonValue(k), toJsonValue(v)]) };
  }
  if (typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.some((k) => k.startsWith("$"))) {
      return { $map: keys.map((k) => [k, toJsonValue(value[k])]) };
    }
    const out = {};
    for (const k of keys) out[k] = toJsonValue(value[k]);
    return out;
  }
  throw new ProtocolError(`cannot encode a value of type ${typeof value}`);
}

/** The JavaScript value of a parsed JSON tree (inverse of toJsonValue). */
export function fromJsonValue(value) {
  if (Array.isArray(value)) return value.map(fromJsonValue);
  if (value === null || typeof value !== "object") return value;
  const keys = Object.keys(value);
  if (keys.length === 1 && keys[0].startsWith("$")) return fromTagged(keys[0], value[keys[0]]);
  const out = {};
  for (const k of keys) out[k] = fromJsonValue(value[k]);
  return out;
}

function fromTagged(key, inner) {
  switch (key) {
    case "$ndarray": {
      const [dtype, shape, data] = inner;
      return new NDArray(dtype, shape, typedFrom(dtype, fromBase64(data)));
    }
    case "$scalar": {
      const [dtype, data] = inner;
      const typed = typedFrom(dtype, fromBase64(data));
      if (typed.length !== 1 || !TYPED[dtype]) return new NDArray(dtype, [], typed);
      const x = typed[0];
      if (dtype === "|b1") return x !== 0;
      if (typeof x === "bigint") {
        return x >= BigInt(Number.MIN_SAFE_INTEGER) && x <= BigInt(Number.MAX_SAFE_INTEGER)
          ? Number(x) : x;
      }
      return x;
    }
    case "$tuple":
      return Tuple.from(inner, fromJsonValue);
    case "$bytes":
      return fromBase64(inner);
    case "$float":
      if (inner === "inf") return Infinity;
      if (inner === "-inf") return -Infinity;
      if (inner === "nan") return NaN;
      throw new ProtocolError(`malformed $float ${JSON.stringify(inner)}`);
    case "$map":
      return new Map(inner.map(([k, v]) => [fromJsonValue(k), fromJsonValue(v)]));
    case "$graph": {
      const [nodes, edges, edgeLinks] = inner.map(fromJsonValue);
      return { nodes, edges, edgeLinks };
    }
    default:
      throw new ProtocolError(`unknown JSON tag ${key}`);
  }
}
