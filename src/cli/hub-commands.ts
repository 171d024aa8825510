import { Command, InvalidArgumentError } from 'commander';
import { defaultCacheDir, listCachedModels, parseModelRef, pullModel, type CachedModel } from '../hub/index.js';
import { collect, EXIT, flag } from './flags.js';
import { DownloadBars, humanBytes } from './progress.js';

/** Bad references are usage errors (exit 2), found before anything is fetched. */
const modelRef = (value: string) => {
  try {
    parseModelRef(value);
    return value;
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message);
  }
};

/** Registers `vl3 pull` and `vl3 ls`. */
export function addHubCommands(program: Command): void {
  program
    .command('pull')
    .description('download a model from the Hugging Face hub into its cache (shared with Python\'s huggingface_hub)')
    .argument('<model>', 'hub id ORG/NAME[@revision] (revision: branch, tag or commit; default main)', modelRef)
    .addOption(flag('--include <glob>', 'fetch the repo files matching this glob instead of the default *.json, *.safetensors, *.txt, *.jinja, tokenizer.*; repeat for several').argParser(collect))
    .addOption(flag('--cache-dir <dir>', 'cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)'))
    .addOption(flag('--endpoint <url>', 'hub URL (default: $HF_ENDPOINT, else https://huggingface.co)'))
    .addOption(flag('--token <token>', 'access token for gated or private models (default: $HF_TOKEN, else the huggingface-cli login token)'))
    .addOption(flag('--offline', 'use the cache only (default: $HF_HUB_OFFLINE)'))
    .addOption(flag('--json', 'print one JSON object: repo, revision, commit, snapshot folder, files'))
    .action(async (model: string, o) => {
      const abort = new AbortController();
      const interrupt = () => abort.abort(new Error('interrupted: partial downloads are kept and the next pull resumes them'));
      process.once('SIGINT', interrupt);
      const bars = new DownloadBars();
      try {
        const result = await pullModel(model, {
          include: o.include,
          cacheDir: o.cacheDir,
          endpoint: o.endpoint,
          token: o.token,
          offline: o.offline,
          onProgress: bars.update,
          signal: abort.signal,
        });
        bars.stop();
        if (result.warning) process.stderr.write(`vl3: ${result.warning}\n`);
        if (o.json) {
          process.stdout.write(JSON.stringify(result) + '\n');
        } else {
          const got = result.downloaded.length ? `downloaded ${result.downloaded.length} files (${humanBytes(result.downloadedBytes)})` : 'already cached';
          process.stderr.write(`${result.repoId}@${result.revision} (${result.commit.slice(0, 12)}): ${result.files.length} files, ${got}\n`);
          process.stdout.write(result.path + '\n');
        }
      } catch (error) {
        bars.stop();
        if (!abort.signal.aborted) throw error;
        process.stderr.write(`vl3: ${(abort.signal.reason as Error).message}\n`);
        process.exitCode = EXIT.interrupted;
      } finally {
        process.removeListener('SIGINT', interrupt);
      }
    });

  program
    .command('ls')
    .description('list the models in the Hugging Face cache')
    .addOption(flag('--cache-dir <dir>', 'cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)'))
    .addOption(flag('--json', 'print a JSON array: repo, folder, size, refs, snapshots, last modified'))
    .action(async (o) => {
      const models = await listCachedModels(o.cacheDir);
      if (o.json) process.stdout.write(JSON.stringify(models) + '\n');
      else process.stdout.write(table(models, o.cacheDir ?? defaultCacheDir()));
    });
}

function table(models: CachedModel[], cacheDir: string): string {
  if (models.length === 0) return `no models in the cache at ${cacheDir}\n`;
  const rows = [
    ['MODEL', 'SIZE', 'REFS', 'SNAPSHOTS', 'MODIFIED', 'PATH'],
    ...models.map((m) => [
      m.repoId,
      humanBytes(m.sizeBytes),
      Object.keys(m.revisions).join(',') || '-',
      String(m.snapshots.length),
      m.lastModified.toISOString().slice(0, 16).replace('T', ' '),
      m.path,
    ]),
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ')).join('\n') + '\n';
}
