/**
 * Identity verification without servers: one value in the forms the servers give it (Orthanc's
 * `?short` tags, DICOM JSON from QIDO-RS and WADO-RS) normalizes to one string; the verdict on an
 * instance's copies; which check each instance gets; and the streaming multipart digests.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { VERIFY_LEVELS } from '../lambdas/core/config.ts';
import { ForwarderError } from '../lambdas/core/errors.ts';
import {
  type Identity,
  identityDifferences,
  identityFromDicomJson,
  identityFromOrthancTags,
  unknownAttributes,
} from '../lambdas/core/identity.ts';
import type { SourceInstance } from '../lambdas/core/orthanc-client.ts';
import { checkFor, duplicatedUids, judgeIdentity } from '../lambdas/core/verification.ts';
import { digestParts } from '../lambdas/core/wado-client.ts';

// pydicom's rtdose_rle.dcm as Orthanc 1.10's `/series/{id}/instances-tags?short` gives it (a few
// non-identifying tags kept for their shapes: null for binary, a list for a sequence): lower-case
// hex, the file's own padding, an absent InstanceNumber given as ''.
const RTDOSE_SHORT = {
  '0008,0016': '1.2.840.10008.5.1.4.1.1.481.2',
  '0008,0018': '1.9.999.999.99.9.9999.9999.20030818153516',
  '0008,0020': '20030805',
  '0008,0050': '',
  '0008,0060': 'RTDOSE',
  '0008,1010': 'Computer001 ',
  '0010,0010': 'Lastname^Firstname',
  '0010,0020': 'id11111 ',
  '0010,0030': '',
  '0010,0040': 'O ',
  '0020,000d': '1.2.999.999.99.9.9999.8888',
  '0020,000e': '1.2.777.777.77.7.7777.7777',
  '0020,0011': '1 ',
  '0020,0013': '',
  '0020,0037': '1.00000000000000\\0.0\\0.0\\0.0\\1.00000000000000\\0.0 ',
  '0028,0009': null,
  '300c,0002': null,
  '0040,a043': [{ '0008,0100': 'IHE.01', '0008,0102': '99_OFFIS_DCMTK' }],
  '7fe0,0010': null,
};

// The same instance in the QIDO-RS answer of an Orthanc that stored it: padding gone, IS as a
// number, PN as an object, empty attributes present without a Value.
const RTDOSE_QIDO = {
  '00080016': { vr: 'UI', Value: ['1.2.840.10008.5.1.4.1.1.481.2'] },
  '00080018': { vr: 'UI', Value: ['1.9.999.999.99.9.9999.9999.20030818153516'] },
  '00080020': { vr: 'DA', Value: ['20030805'] },
  '00080050': { vr: 'SH' },
  '00080060': { vr: 'CS', Value: ['RTDOSE'] },
  '00100010': { vr: 'PN', Value: [{ Alphabetic: 'Lastname^Firstname' }] },
  '00100020': { vr: 'LO', Value: ['id11111'] },
  '00100030': { vr: 'DA' },
  '00100040': { vr: 'CS', Value: ['O'] },
  '0020000D': { vr: 'UI', Value: ['1.2.999.999.99.9.9999.8888'] },
  '0020000E': { vr: 'UI', Value: ['1.2.777.777.77.7.7777.7777'] },
  '00200011': { vr: 'IS', Value: [1] },
  '00200013': { vr: 'IS' },
  '00081190': { vr: 'UR', Value: ['http://127.0.0.1:8042/dicom-web/studies/1.2.999.999.99.9.9999.8888'] },
};

/** A source identity with some attributes replaced. */
const fromTags = (changes: Record<string, unknown> = {}): Identity =>
  identityFromOrthancTags({ ...RTDOSE_SHORT, ...changes });

/** A DICOM JSON dataset with some elements replaced, or removed where the change is undefined. */
const fromJson = (changes: Record<string, unknown> = {}): Identity =>
  identityFromDicomJson(
    Object.fromEntries(
      Object.entries({ ...RTDOSE_QIDO, ...changes }).filter(([, element]) => element !== undefined),
    ),
  );

describe('identity normalization', () => {
  it('reads a real `?short` object: lower-case hex keys, padding trimmed, absent as empty', () => {
    expect(fromTags()).toEqual({
      PatientID: 'id11111',
      PatientName: 'Lastname^Firstname',
      PatientBirthDate: '',
      PatientSex: 'O',
      StudyInstanceUID: '1.2.999.999.99.9.9999.8888',
      SeriesInstanceUID: '1.2.777.777.77.7.7777.7777',
      SOPInstanceUID: '1.9.999.999.99.9.9999.9999.20030818153516',
      SOPClassUID: '1.2.840.10008.5.1.4.1.1.481.2',
      AccessionNumber: '',
      StudyDate: '20030805',
      Modality: 'RTDOSE',
      SeriesNumber: '1',
      InstanceNumber: '',
    });
  });

  it("finds the file's tags and the archive's DICOM JSON of one instance the same", () => {
    expect(identityDifferences(fromTags(), fromJson())).toEqual([]);
    expect(unknownAttributes(fromJson())).toEqual([]);
  });

  it.each([
    ['empty trailing components', 'DOE^JANE^^^'],
    ['padded components', ' DOE ^JANE'],
    ['an ideographic group after =', 'DOE^JANE=山田^花子'],
    ['ideographic and phonetic groups', 'DOE^JANE^^^=山田^花子=やまだ^はなこ'],
  ])('compares person names without %s', (_, name) => {
    expect(fromTags({ '0010,0010': name }).PatientName).toBe('DOE^JANE');
    expect(
      identityDifferences(
        fromTags({ '0010,0010': name }),
        fromJson({ '00100010': { vr: 'PN', Value: [{ Alphabetic: 'DOE^JANE', Ideographic: '山田^花子' }] } }),
      ),
    ).toEqual([]);
  });

  it('still tells other person names apart', () => {
    expect(fromTags({ '0010,0010': 'DOE^JOHN' }).PatientName).not.toBe(
      fromTags({ '0010,0010': 'DOE^JANE' }).PatientName,
    );
    expect(fromTags({ '0010,0010': 'DOE^^JANE' }).PatientName).not.toBe('DOE^JANE');
  });

  it.each([['0001'], [' 1'], ['1 '], ['+1']])('takes InstanceNumber %j for the number 1', (text) => {
    expect(
      identityDifferences(
        fromTags({ '0020,0013': text }),
        fromJson({ '00200013': { vr: 'IS', Value: [1] } }),
      ),
    ).toEqual([]);
  });

  it('keeps other InstanceNumbers apart, and a text that is not a number as it is', () => {
    expect(fromTags({ '0020,0013': '2' }).InstanceNumber).not.toBe(
      fromTags({ '0020,0013': '1' }).InstanceNumber,
    );
    expect(fromTags({ '0020,0013': ' 1A ' }).InstanceNumber).toBe('1A');
  });

  it('ignores the NUL or space that pads a UID', () => {
    const padded = fromTags({ '0008,0018': '1.9.999.999.99.9.9999.9999.20030818153516\0' });
    expect(padded.SOPInstanceUID).toBe('1.9.999.999.99.9.9999.9999.20030818153516');
    const spaced = fromJson({ '0020000D': { vr: 'UI', Value: ['1.2.999.999.99.9.9999.8888 '] } });
    expect(identityDifferences(padded, spaced)).toEqual([]);
  });

  it('reads multiple values joined with a backslash as the list DICOM JSON gives', () => {
    const tags = fromTags({ '0010,0010': 'DOE^JANE^^\\ROE^RICHARD ', '0020,0011': '01\\2 ' });
    const json = fromJson({
      '00100010': { vr: 'PN', Value: [{ Alphabetic: 'DOE^JANE' }, { Alphabetic: 'ROE^RICHARD' }] },
      '00200011': { vr: 'IS', Value: [1, 2] },
    });
    expect(tags.PatientName).toBe('DOE^JANE\\ROE^RICHARD');
    expect(identityDifferences(tags, json)).toEqual([]);
    const oneSeriesNumber = fromJson({ '00200011': { vr: 'IS', Value: [1] } });
    expect(identityDifferences(fromTags({ '0020,0011': '01\\2 ' }), oneSeriesNumber)).toEqual([
      'SeriesNumber',
    ]);
  });

  it('takes a DICOM JSON element left out for unknown, and one without a Value for empty', () => {
    const withoutAccession = fromJson({ '00080050': undefined });
    expect(withoutAccession.AccessionNumber).toBeUndefined();
    expect(unknownAttributes(withoutAccession)).toEqual(['AccessionNumber']);
    // Unknown never matches, not even the source's empty value: an archive may have left it out.
    expect(identityDifferences(fromTags(), withoutAccession)).toEqual(['AccessionNumber']);
    expect(fromJson().AccessionNumber).toBe('');
    expect(fromJson({ '00080050': { vr: 'SH', Value: [] } }).AccessionNumber).toBe('');
  });

  it('names each attribute that differs, and never a value', () => {
    const other = fromJson({
      '00100020': { vr: 'LO', Value: ['OTHER'] },
      '00080020': { vr: 'DA', Value: ['20990101'] },
    });
    expect(identityDifferences(fromTags(), other)).toEqual(['PatientID', 'StudyDate']);
  });
});

const SOP = '1.9.999.999.99.9.9999.9999.20030818153516';
const copy = (identity: Identity) => ({ sopInstanceUid: SOP, identity });

describe('judging the copies of an instance', () => {
  it('holds the instance when any copy has its identity, whatever the others', () => {
    const others = [copy(fromJson({ '00100020': { vr: 'LO', Value: ['OTHER'] } })), copy(fromJson())];
    expect(judgeIdentity(fromTags(), others)).toEqual({ kind: 'held' });
  });

  it("names the differing attributes of the copy that differs least, in the attributes' order", () => {
    const far = copy(
      fromJson({
        '00100010': { vr: 'PN', Value: [{ Alphabetic: 'ROE^RICHARD' }] },
        '00100020': { vr: 'LO', Value: ['OTHER'] },
        '00200013': { vr: 'IS', Value: [7] },
      }),
    );
    const near = copy(
      fromJson({ '00200013': { vr: 'IS', Value: [7] }, '00080020': { vr: 'DA', Value: ['20990101'] } }),
    );
    expect(judgeIdentity(fromTags(), [far, near])).toEqual({
      kind: 'conflict',
      attributes: ['StudyDate', 'InstanceNumber'],
    });
    expect(judgeIdentity(fromTags(), [near, far])).toEqual({
      kind: 'conflict',
      attributes: ['StudyDate', 'InstanceNumber'],
    });
  });

  it('finds nothing to prove without a copy, or without the source identity', () => {
    expect(judgeIdentity(fromTags(), [])).toEqual({ kind: 'absent' });
    expect(judgeIdentity(undefined, [copy(fromJson())])).toEqual({ kind: 'absent' });
  });
});

const instance = (id: string, sopInstanceUid: string): SourceInstance => ({
  id,
  sopInstanceUid,
  seriesId: 'series',
  fileSize: 1,
  fileUuid: `file-${id}`,
});

describe('the check each instance gets', () => {
  const plain = instance('a', '1.1');
  const twin = instance('b', '1.2');
  const none = { duplicated: new Set<string>(), unproven: new Set<string>() };

  const duplicated = { ...none, duplicated: new Set(['1.2']) };
  const unproven = { ...none, unproven: new Set(['b']) };

  // A UID two instances share rises to identity: only identity tells their copies apart. So does
  // an instance whose STOW answer proves nothing ("already exists", stored with a warning), where
  // checksum falls to identity too: a coerced copy's bytes differ on purpose.
  it.each([
    ['an instance nothing calls out', plain, none, ['stow', 'presence', 'identity', 'checksum']],
    ['an instance whose UID another has', twin, duplicated, ['identity', 'identity', 'identity', 'checksum']],
    ['an instance beside such a pair', plain, duplicated, ['stow', 'presence', 'identity', 'checksum']],
    ['an unproven instance', twin, unproven, ['identity', 'identity', 'identity', 'identity']],
    ['an instance beside an unproven one', plain, unproven, ['stow', 'presence', 'identity', 'checksum']],
  ] as const)('checks %s at stow, qido, identity and checksum with %j', (_, subject, context, checks) => {
    expect(VERIFY_LEVELS.map((level) => checkFor(level, subject, context))).toEqual(checks);
  });

  it('finds the UIDs more than one instance has, once each', () => {
    const snapshot = [plain, twin, instance('c', '1.2'), instance('d', '1.3'), instance('e', '1.2')];
    expect([...duplicatedUids(snapshot)]).toEqual(['1.2']);
    expect(duplicatedUids([plain, twin]).size).toBe(0);
  });
});

describe('digesting a multipart answer as it streams', () => {
  const BOUNDARY = 'orthanc-0123456789abcdef';
  const md5 = (data: Buffer) => createHash('md5').update(data).digest('hex');
  const parts = [
    Buffer.concat([Buffer.from('DICM'), Buffer.from([0, 1, 2, 13, 10, 45, 45, 255])]),
    Buffer.alloc(0),
    // What looks like the start of a delimiter, up to one byte short of it, inside the data.
    Buffer.from(`head\r\n--orthanc\r\n--orthanc-0123456789abcde\r\n-\r\n--tail\r\n`),
  ];
  const body = (options: { preamble?: string; closing?: boolean } = {}) =>
    Buffer.concat([
      Buffer.from(options.preamble ?? ''),
      ...parts.flatMap((part) => [
        Buffer.from(`--${BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n`),
        part,
        Buffer.from('\r\n'),
      ]),
      Buffer.from(options.closing === false ? '' : `--${BOUNDARY}--\r\n`),
    ]);
  async function* chunks(...pieces: Buffer[]): AsyncGenerator<Buffer> {
    for (const piece of pieces) yield piece;
  }
  const expected = parts.map(md5);

  it('gives the MD5 of each part wherever the chunks are cut', async () => {
    const whole = body();
    for (let at = 0; at <= whole.length; at++) {
      const digests = await digestParts(chunks(whole.subarray(0, at), whole.subarray(at)), BOUNDARY);
      expect(digests, `cut at ${at}`).toEqual(expected);
    }
  });

  it('gives the same from one byte at a time, and from two cuts anywhere around a delimiter', async () => {
    const whole = body();
    const bytes = [...whole].map((byte) => Buffer.from([byte]));
    expect(await digestParts(chunks(...bytes), BOUNDARY)).toEqual(expected);
    const second = whole.indexOf(`--${BOUNDARY}`, 1);
    for (let first = second - 4; first < second + BOUNDARY.length + 4; first++) {
      for (let next = first; next < second + BOUNDARY.length + 8; next++) {
        const pieces = [whole.subarray(0, first), whole.subarray(first, next), whole.subarray(next)];
        expect(await digestParts(chunks(...pieces), BOUNDARY), `cut at ${first} and ${next}`).toEqual(
          expected,
        );
      }
    }
  });

  // The line break before a delimiter belongs to it (RFC 2046), so a preamble ends with one.
  it('ignores a preamble before the first delimiter', async () => {
    for (const preamble of ['This is a multipart answer.\r\n', '\r\n', `--${BOUNDARY.slice(0, -1)}\r\n`]) {
      expect(await digestParts(chunks(body({ preamble })), BOUNDARY)).toEqual(expected);
    }
  });

  it('rejects an answer that ends before its closing delimiter', async () => {
    const cut = body({ closing: false });
    for (const truncated of [
      cut,
      cut.subarray(0, cut.length - 10),
      Buffer.concat([cut, Buffer.from(`--${BOUNDARY}`)]),
    ]) {
      const error = await digestParts(chunks(truncated), BOUNDARY).catch((thrown: unknown) => thrown);
      expect(error).toBeInstanceOf(ForwarderError);
      expect((error as ForwarderError).kind).toBe('transient');
    }
    await expect(digestParts(chunks(), BOUNDARY)).rejects.toThrow(/closing delimiter/);
  });
});
