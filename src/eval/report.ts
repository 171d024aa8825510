// The tables the paper reports: printed on the terminal, and written as Markdown beside results.json.
import type { Report, Row, Section } from './types.js';

const value = (section: Section, row: Row) => (Number.isNaN(row.value) ? '-' : section.unit === '%' ? row.value.toFixed(2) : section.unit === 'score' ? row.value.toFixed(2) : String(row.value));

function rows(section: Section): string[][] {
  return [...section.rows, section.overall].map((r) => [r.task, value(section, r), String(r.count)]);
}

export function formatMarkdown(report: Report, failures: { id: string; error: string }[] = []): string {
  const out = [`# ${report.benchmark} (${report.mode === 'official' ? 'official extraction' : 'robust extraction'})`, '', `${report.answered} of ${report.samples} samples answered.`, ''];
  for (const s of report.sections) {
    out.push(`## ${s.name}`, '', `| task | ${s.unit === 'count' ? 'correct' : s.unit === 'score' ? 'score' : '%'} | samples |`, '| --- | ---: | ---: |');
    for (const r of rows(s)) out.push(`| ${r.join(' | ')} |`);
    out.push('');
  }
  if (report.unparsed.length) {
    out.push(`## Answers not parsed (${report.unparsed.length})`, '', '| id | reason | answer |', '| --- | --- | --- |');
    for (const u of report.unparsed) out.push(`| ${u.id} | ${u.reason} | ${JSON.stringify(u.response).replaceAll('|', '\\|')} |`);
    out.push('');
  }
  if (failures.length) {
    out.push(`## Samples that failed (${failures.length}, tried again by the next run)`, '');
    for (const f of failures) out.push(`- ${f.id}: ${f.error}`);
    out.push('');
  }
  for (const n of report.notes) out.push(`> ${n}`, '');
  return `${out.join('\n')}\n`;
}

/** A plain-text table per section, for the terminal. */
export function formatTable(report: Report): string {
  const out: string[] = [];
  for (const s of report.sections) {
    const table = [['task', s.unit === 'count' ? 'correct' : s.unit === 'score' ? 'score' : '%', 'n'], ...rows(s)];
    const widths = [0, 1, 2].map((c) => Math.max(...table.map((r) => r[c]!.length)));
    out.push(`${s.name}:`);
    table.forEach((r, i) => {
      out.push(`  ${r[0]!.padEnd(widths[0]!)}  ${r[1]!.padStart(widths[1]!)}  ${r[2]!.padStart(widths[2]!)}`);
      if (i === 0 || i === table.length - 2) out.push(`  ${'-'.repeat(widths[0]! + widths[1]! + widths[2]! + 4)}`);
    });
    out.push('');
  }
  out.push(`${report.answered} of ${report.samples} samples answered; ${report.unparsed.length} answers not parsed${report.unparsed.length ? ' (listed in results.md)' : ''}.`);
  for (const n of report.notes) out.push(`note: ${n}`);
  return `${out.join('\n')}\n`;
}
