// sse.mjs - small, strict helpers for Server-Sent Events byte streams as the
// OpenAI-format providers send them: events separated by a blank line, each
// made of `data:` lines (and `:` comment lines on OpenRouter).

/**
 * Splits an SSE byte stream into its events, each a Buffer that keeps its
 * exact bytes including the terminating blank line. Returns {events, rest}:
 * rest holds the bytes after the last complete event (a partial event).
 */
export function splitEvents(buf) {
  const events = [];
  let start = 0;
  let i = 0;
  while (i < buf.length) {
    if (buf[i] === 0x0a && buf[i + 1] === 0x0a) {
      events.push(buf.subarray(start, i + 2));
      i += 2;
      start = i;
    } else if (buf[i] === 0x0d && buf[i + 1] === 0x0a && buf[i + 2] === 0x0d && buf[i + 3] === 0x0a) {
      events.push(buf.subarray(start, i + 4));
      i += 4;
      start = i;
    } else {
      i += 1;
    }
  }
  return { events, rest: buf.subarray(start) };
}

/** The joined `data:` payload of one event (null when the event has no data line). */
export function eventData(ev) {
  const lines = ev.toString('utf8').split(/\r?\n/);
  const data = [];
  for (const line of lines) {
    if (line.startsWith('data:')) data.push(line.slice(line[5] === ' ' ? 6 : 5));
  }
  return data.length ? data.join('\n') : null;
}

/** The parsed JSON payload of one event, or null for comments, [DONE] and non-JSON data. */
export function eventJson(ev) {
  const d = eventData(ev);
  if (d === null || d === '[DONE]') return null;
  try {
    return JSON.parse(d);
  } catch {
    return null;
  }
}

/** True for OpenAI's extra usage chunk: `"choices":[]` and a usage object. */
export function isUsageOnlyChunk(ev) {
  const j = eventJson(ev);
  return j !== null && Array.isArray(j.choices) && j.choices.length === 0 &&
    j.usage !== null && typeof j.usage === 'object';
}

/** The last non-null `usage` object carried by any event, or null. */
export function lastUsage(events) {
  let usage = null;
  for (const ev of events) {
    const j = eventJson(ev);
    if (j && j.usage && typeof j.usage === 'object') usage = j.usage;
  }
  return usage;
}
