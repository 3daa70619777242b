import { describe, expect, it } from 'vitest';
import { interpret } from '../lambdas/core/stow-client.ts';

// Orthanc never answers with these failure reasons on demand, so the answers are written here.
const failed = (uid: string, reason: number) => ({
  '00081155': { vr: 'UI', Value: [uid] },
  '00081197': { vr: 'US', Value: [reason] },
});
const stored = (uid: string) => ({ '00081155': { vr: 'UI', Value: [uid] } });

describe('interpreting a STOW-RS answer', () => {
  it('leaves instances refused for now (out of resources) to be retried, and others refused for good', () => {
    const answer = {
      '00081199': { vr: 'SQ', Value: [stored('1.1')] },
      '00081198': { vr: 'SQ', Value: [failed('1.2', 0xa700), failed('1.3', 0xc000), failed('1.4', 0x0110)] },
    };
    const result = interpret(answer, ['1.1', '1.2', '1.3', '1.4', '1.5']);
    expect([...result.stored]).toEqual(['1.1']);
    expect([...result.refused.keys()].sort()).toEqual(['1.3', '1.5']);
    expect(result.refused.get('1.3')).toContain('0xc000');
    expect(result.refused.get('1.5')).toContain('not acknowledged');
  });

  it('ignores UIDs in the answer that were not sent', () => {
    const answer = { '00081199': { vr: 'SQ', Value: [stored('9.9'), stored('1.1')] } };
    const result = interpret(answer, ['1.1']);
    expect([...result.stored]).toEqual(['1.1']);
    expect(result.refused.size).toBe(0);
  });
});
