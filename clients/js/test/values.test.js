import assert from "node:assert/strict";
import { test } from "node:test";

import { NDArray, Scalar, Tuple, decodeMessage, encodeMessage, fromJsonValue, toJsonValue } from "../src/index.js";
import { decodeEnvelope, encodeEnvelope } from "../src/messages.js";
import { tokenSubprotocol } from "../src/socket.js";

test("framing keeps frames, order and empty frames", () => {
  const frames = [new Uint8Array([1, 2, 3]), new Uint8Array(0), new Uint8Array(70000).fill(7)];
  const message = encodeMessage(frames);
  assert.equal(message.byteLength, 4 + 8 * 3 + 3 + 70000);
  const back = decodeMessage(message.buffer);
  assert.deepEqual(back.map((f) => Array.from(f.subarray(0, 3))), [[1, 2, 3], [], [7, 7, 7]]);
  assert.equal(back[2].byteLength, 70000);
});

test("framing rejects a bad header", () => {
  assert.throws(() => decodeMessage(new Uint8Array([1, 0])), /header/);
  const bad = encodeMessage([new Uint8Array(4)]).subarray(0, 10);
  assert.throws(() => decodeMessage(bad), /header|exceed|add up/);
});

test("the header layout is u32 count + u64 lengths, little-endian", () => {
  const message = encodeMessage([new Uint8Array([9]), new Uint8Array([8, 8])]);
  assert.deepEqual(Array.from(message), [2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 8, 8]);
});

test("JSON values round-trip", () => {
  const array = new NDArray("float32", [2, 2], [1.5, -2, Infinity, 0]);
  const value = {
    array, tuple: Tuple.of(1, "a"), list: [1, 2.5, null, true], bytes: new Uint8Array([0, 255]),
    inf: -Infinity, nan: NaN, map: new Map([[1, "one"]]), odd: { "$odd": 3 }, big: 2n ** 60n,
  };
  const back = fromJsonValue(JSON.parse(JSON.stringify(toJsonValue(value))));
  assert.ok(back.array instanceof NDArray);
  assert.equal(back.array.dtype, "<f4");
  assert.deepEqual(back.array.shape, [2, 2]);
  assert.deepEqual(back.array.toList(), [[1.5, -2], [Infinity, 0]]);
  assert.ok(back.tuple instanceof Tuple);
  assert.deepEqual(Array.from(back.tuple), [1, "a"]);
  assert.deepEqual(back.list, [1, 2.5, null, true]);
  assert.deepEqual(Array.from(back.bytes), [0, 255]);
  assert.equal(back.inf, -Infinity);
  assert.ok(Number.isNaN(back.nan));
  assert.equal(back.map.get(1), "one");
  assert.equal(back.big, 2n ** 60n);
  // an object with a "$" key travels as $map
  assert.deepEqual(toJsonValue({ "$odd": 3 }), { $map: [["$odd", 3]] });
  assert.equal(back.odd.get("$odd"), 3);
});

test("encoding matches relay/codecs/json.py", () => {
  assert.deepEqual(toJsonValue(new NDArray("<i4", [2], [1, 2])), { $ndarray: ["<i4", [2], "AQAAAAIAAAA="] });
  assert.deepEqual(toJsonValue(new Scalar("<i8", 3)), { $scalar: ["<i8", "AwAAAAAAAAA="] });
  assert.deepEqual(toJsonValue(Tuple.of(1, 2)), { $tuple: [1, 2] });
  assert.deepEqual(toJsonValue(Infinity), { $float: "inf" });
  assert.equal(fromJsonValue({ $scalar: ["<i8", "AwAAAAAAAAA="] }), 3);
  assert.equal(fromJsonValue({ $scalar: ["|b1", "AQ=="] }), true);
  assert.throws(() => fromJsonValue({ $nope: 1 }), /unknown JSON tag/);
});

test("an envelope is one JSON frame {id, tag, body}", () => {
  const message = encodeEnvelope(3, "step", { instance: 1, action: 0 });
  const frames = decodeMessage(message);
  assert.equal(frames.length, 1);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(frames[0])),
    { id: 3, tag: "step", body: { instance: 1, action: 0 } });
  assert.deepEqual(decodeEnvelope(message), { id: 3, tag: "step", body: { instance: 1, action: 0 } });
});

test("the browser token subprotocol matches relay/transports/ws.py", () => {
  assert.equal(tokenSubprotocol("s3cret"), "relay.token.czNjcmV0");
});
