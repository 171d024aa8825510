/**
 * What `vl3 pull` fetches unless told otherwise: what our loader reads (config and processor JSON, safetensors
 * weights and their index, the tokenizer's vocab/merges/JSON, chat templates). The rest of a checkpoint repo is
 * skipped on purpose: `*.py` is remote code for Python's transformers that we never run, and README, `.gitattributes`
 * and the model card's images (`assets/*.png`, sometimes megabytes) are not needed to answer anything.
 */
export const DEFAULT_INCLUDE: readonly string[] = ['*.json', '*.safetensors', '*.txt', '*.jinja', 'tokenizer.*'];

/**
 * Glob → RegExp with Python fnmatch semantics (what `huggingface-cli download --include` uses, so the same patterns
 * select the same files): `*` matches anything including `/`, `?` one character, `[abc]` / `[!abc]` a class.
 */
export function globToRegExp(glob: string): RegExp {
  let source = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') source += '.*';
    else if (c === '?') source += '.';
    else if (c === '[') {
      // A `]` right after `[` or `[!` is a member, as in fnmatch; an unclosed `[` is a literal.
      let j = i + 1;
      if (glob[j] === '!') j++;
      if (glob[j] === ']') j++;
      while (j < glob.length && glob[j] !== ']') j++;
      if (j >= glob.length) {
        source += '\\[';
        continue;
      }
      let body = glob.slice(i + 1, j).replaceAll('\\', '\\\\');
      if (body.startsWith('!')) body = '^' + body.slice(1);
      else if (body.startsWith('^')) body = '\\' + body;
      source += `[${body}]`;
      i = j;
    } else source += c.replace(/[.+^${}()|\\\/]/g, '\\$&');
  }
  return new RegExp(`^${source}$`, 's');
}

/** A predicate true for a repo path matching any of the globs. */
export function fileMatcher(globs: readonly string[]): (path: string) => boolean {
  const res = globs.map(globToRegExp);
  return (path) => res.some((re) => re.test(path));
}
