// `vl3 ask` and `vl3 chat` as a person sees them: run in a real pseudo-terminal (tmux), where the progress bars are
// drawn and removed, and the screen read back at the end must hold the whole answer with the bars gone.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { VideoLLaMA3 } from '../src/api/videollama3.js';
import { fixturesDir, FIXTURES_MISSING, repoRoot, TINY_CHECKPOINT } from './fixtures.js';

const fixtures = fixturesDir();
const hasTmux = spawnSync('tmux', ['-V']).status === 0;
if (!hasTmux && process.env.CI) throw new Error('tmux not found (apt-get install tmux; required when CI is set)');
const vl3 = join(repoRoot(), 'dist', 'src', 'cli', 'vl3.js');

/** One tmux server of our own (its own socket), so that nothing of the user's tmux is touched. */
class Terminal {
  private readonly socket = `vl3-test-${randomBytes(4).toString('hex')}`;

  /** Starts `argv` in a 200x50 terminal; its exit status is printed after it as "[exit N]". */
  start(argv: string[]): void {
    const quoted = argv.map((a) => `'${a.replaceAll("'", `'\\''`)}'`).join(' ');
    this.tmux('new-session', '-d', '-x', '200', '-y', '50', `${quoted}; echo "[exit $?]"; sleep 600`);
  }

  /** The visible screen, wrapped lines joined (tmux moves a screen cleared from its top into the scrollback). */
  screen(): string {
    return this.tmux('capture-pane', '-p', '-J');
  }

  keys(...keys: string[]): void {
    this.tmux('send-keys', ...keys);
  }

  /** Waits until the screen matches (at most `seconds`), and returns it. */
  async waitFor(pattern: RegExp, seconds = 90): Promise<string> {
    const deadline = Date.now() + seconds * 1000;
    for (;;) {
      const screen = this.screen();
      if (pattern.test(screen)) return screen;
      if (Date.now() > deadline) assert.fail(`the screen never showed ${pattern}:\n${screen}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  close(): void {
    spawnSync('tmux', ['-L', this.socket, 'kill-server']);
  }

  private tmux(...args: string[]): string {
    return execFileSync('tmux', ['-L', this.socket, ...args], { encoding: 'utf8' });
  }
}

/** Text as compared on a screen: tabs become spaces, long lines wrap, so only the non-blank characters count. */
const visible = (text: string) => text.replace(/\s+/g, '');

describe('vl3 in a terminal', { skip: (!fixtures && FIXTURES_MISSING) || (!hasTmux && 'tmux not found; skipped') }, () => {
  const checkpoint = fixtures ? join(fixtures, TINY_CHECKPOINT) : '';
  const image = fixtures ? join(fixtures, 'media', 'cat.jpg') : '';
  let model: VideoLLaMA3;
  let terminal: Terminal;

  before(async () => {
    model = await VideoLLaMA3.load(checkpoint);
  });
  after(() => terminal?.close());

  it('ask leaves the whole streamed answer on the screen, and no progress bar', async () => {
    terminal = new Terminal();
    terminal.start([process.execPath, vl3, 'ask', '--model', checkpoint, '--image', image, '--greedy', '--max-new-tokens', '40', 'What is in this image?']);
    const screen = await terminal.waitFor(/\[exit \d+\]/);
    terminal.close();
    assert.match(screen, /\[exit 0\]/);
    const expected = await model.chat([{ role: 'user', content: [{ type: 'image', image }, { type: 'text', text: 'What is in this image?' }] }], { greedy: true, maxNewTokens: 40, addSystemPrompt: true }).result;
    assert.ok(expected.tokenIds.length === 40, 'a long answer, streamed in many pieces');
    assert.ok(visible(screen).includes(visible(expected.text)), `the whole answer is on the screen:\n${screen}\nexpected:\n${expected.text}`);
    for (const bar of ['loading weights', 'encoding frames', 'reading prompt']) assert.ok(!screen.includes(bar), `the "${bar}" bar is gone`);
  });

  it('chat keeps "assistant>" and the whole answer of every turn on the screen', async () => {
    terminal = new Terminal();
    terminal.start([process.execPath, vl3, 'chat', '--model', checkpoint, '--greedy', '--max-new-tokens', '24']);
    await terminal.waitFor(/you> $/m);
    terminal.keys(`/image ${image}`, 'Enter');
    await terminal.waitFor(/attached image/);
    terminal.keys('What is this?', 'Enter');
    await terminal.waitFor(/^you> .*\n(?:.*\n)*you> $/m);
    terminal.keys('Tell me more.', 'Enter');
    await terminal.waitFor(/Tell me more\.\n(?:.*\n)*you> $/m);
    terminal.keys('/exit', 'Enter');
    const screen = await terminal.waitFor(/\[exit \d+\]/);
    terminal.close();
    assert.match(screen, /\[exit 0\]/);

    const options = { greedy: true, maxNewTokens: 24, addSystemPrompt: true };
    const first = { role: 'user' as const, content: [{ type: 'image' as const, image }, { type: 'text' as const, text: 'What is this?' }] };
    const a1 = (await model.chat([first], options).result).text;
    const a2 = (await model.chat([first, { role: 'assistant', content: a1 }, { role: 'user', content: [{ type: 'text', text: 'Tell me more.' }] }], options).result).text;
    const shown = visible(screen);
    assert.ok(shown.includes(visible(`you (1 attached)> What is this?assistant> ${a1}you>`)), `the first turn is whole on the screen:\n${screen}`);
    assert.ok(shown.includes(visible(`you> Tell me more.assistant> ${a2}you>`)), `the second turn is whole on the screen:\n${screen}`);
    for (const bar of ['encoding frames', 'reading prompt']) assert.ok(!screen.includes(bar), `the "${bar}" bar is gone`);
  });
});
