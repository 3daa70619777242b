import { describe, expect, it } from 'vitest';
import { interpret } from '../lambdas/core/stow-client.ts';

// Orthanc never answers with these failure reasons on demand, so the answers are written here.
const failed = (uid: string, reason: number) => ({
  '00081155': { vr: 'UI', Value: [uid] },
  '00081197': { vr: 'US', Value: [reason] },
});
const stored = (uid: string) => ({ '00081155': { vr: 'UI', Value: [uid] } });
/** Stored, but changed on the way in (0xB000: coercion of data elements). */
const warned = (uid: string) => ({ ...stored(uid), '00081196': { vr: 'US', Value: [0xb000] } });

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

  it('takes an instance stored with a warning (a 202) for stored and coerced: its answer proves nothing', () => {
    const answer = { '00081199': { vr: 'SQ', Value: [stored('1.1'), warned('1.2')] } };
    const result = interpret(answer, ['1.1', '1.2']);
    expect([...result.stored]).toEqual(['1.1', '1.2']);
    expect([...result.coerced]).toEqual(['1.2']);
    expect(result.refused.size).toBe(0);
    expect(result.existing.size).toBe(0);
  });

  it.each([
    ['45070 (Azure)', 45070],
    ['0x0111 (duplicate SOP instance)', 0x0111],
  ])('takes a 409 with failure reason %s for already existing, not refused', (_, reason) => {
    const answer = {
      '00081199': { vr: 'SQ', Value: [stored('1.1')] },
      '00081198': { vr: 'SQ', Value: [failed('1.2', reason), failed('1.3', 0xc000)] },
    };
    const result = interpret(answer, ['1.1', '1.2', '1.3']);
    expect([...result.existing]).toEqual(['1.2']);
    expect([...result.refused.keys()]).toEqual(['1.3']);
    expect([...result.stored]).toEqual(['1.1']);
    expect(result.coerced.size).toBe(0);
  });

  it('leaves out of resources (0xA700) to be retried: neither existing nor refused', () => {
    const answer = { '00081198': { vr: 'SQ', Value: [failed('1.1', 0xa700)] } };
    const result = interpret(answer, ['1.1']);
    expect(result.existing.size).toBe(0);
    expect(result.refused.size).toBe(0);
    expect(result.stored.size).toBe(0);
    expect(result.coerced.size).toBe(0);
  });
});
