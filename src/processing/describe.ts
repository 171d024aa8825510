/**
 * A short description of any value for an error message: by type and size, never by serialising it, since a value
 * from a request may be nested 100,000 levels deep or be megabytes long.
 */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (typeof value === 'string') return `the string ${quoted(value)}`;
  if (typeof value === 'number') return String(value); // Infinity and NaN included, which JSON would print as null
  if (typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (Array.isArray(value)) return `a list of ${value.length} item${value.length === 1 ? '' : 's'}`;
  if (typeof value === 'object') {
    const keys = Object.keys(value).length;
    return `an object with ${keys} key${keys === 1 ? '' : 's'}`;
  }
  return `a ${typeof value}`;
}

/** A string in quotes, cut to `max` characters with its length said when longer. */
export function quoted(text: string, max = 40): string {
  return text.length > max ? `${JSON.stringify(text.slice(0, max) + '…')} (${text.length} characters)` : JSON.stringify(text);
}
