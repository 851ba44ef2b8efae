// Space descriptions (docs/protocol.md, "Spaces"; relay/core/spaces.py), built
// from JavaScript, and the membership test the environment side uses.

import { NDArray, Tuple, dtypeStr } from "./values.js";

function filled(value, shape, dtype) {
  if (value instanceof NDArray) return value;
  const array = new NDArray(dtype, shape);
  const big = array.data instanceof BigInt64Array || array.data instanceof BigUint64Array;
  array.data.fill(big ? BigInt(value) : value);
  return array;
}

/** Box(low, high, shape, dtype): low/high a number (filled) or an NDArray. */
export function Box(low, high, shape, dtype = "<f4") {
  dtype = dtypeStr(dtype);
  return { type: "Box", low: filled(low, shape, dtype), high: filled(high, shape, dtype),
    shape: Tuple.from(shape), dtype };
}

/** Discrete(n, start): integers start .. start + n - 1. */
export function Discrete(n, start = 0, dtype = "<i8") {
  return { type: "Discrete", n, start, dtype: dtypeStr(dtype) };
}

export function MultiBinary(n) {
  return { type: "MultiBinary", n: Array.isArray(n) ? Tuple.from(n) : n };
}

export function MultiDiscrete(nvec, dtype = "<i8") {
  const shape = [nvec.length];
  return { type: "MultiDiscrete", nvec: new NDArray(dtype, shape, nvec),
    start: new NDArray(dtype, shape, nvec.map(() => 0)), dtype: dtypeStr(dtype) };
}

export function Dict(spaces) {
  return { type: "Dict", spaces };
}

export function TupleSpace(spaces) {
  return { type: "Tuple", spaces: Tuple.from(spaces) };
}

/** Whether `value` (as decoded from JSON) belongs to `space` (loose for nested types). */
export function contains(space, value) {
  if (!space || typeof space !== "object") return true;
  switch (space.type) {
    case "Discrete":
      return Number.isInteger(value) && value >= space.start && value < space.start + space.n;
    case "Box": {
      const shape = Array.from(space.shape);
      if (value instanceof NDArray) {
        if (value.shape.length !== shape.length || value.shape.some((d, i) => d !== shape[i])) return false;
        const low = space.low.data;
        const high = space.high.data;
        return Array.prototype.every.call(value.data, (x, i) => !(x < low[i]) && !(x > high[i]));
      }
      return typeof value === "number" && shape.length === 0;
    }
    default:
      return true;
  }
}
