/**
 * Reads the data-set elements of a DICOM Part 10 file in explicit VR little endian (what the
 * test bed's generator writes), up to the pixel data: what the cloud archive stand-ins index and
 * answer QIDO-RS and metadata requests with. Throws on anything else, as an archive refuses a
 * file it cannot read.
 */
import { IDENTITY_ATTRIBUTES } from '../../lambdas/core/identity.ts';

/** VRs whose header has two reserved bytes and a 32-bit length (PS3.5 7.1.2). */
const LONG_FORM = new Set(['OB', 'OD', 'OF', 'OL', 'OV', 'OW', 'SQ', 'SV', 'UC', 'UN', 'UR', 'UT', 'UV']);
const PIXEL_DATA = '7FE00010';

export interface DicomElement {
  readonly vr: string;
  /** The value as text, padding removed; '' for none. */
  readonly text: string;
}

/** The elements by tag (`ggggeeee`, upper case), file meta information excluded. */
export const readDicom = (file: Buffer): Map<string, DicomElement> => {
  if (file.length < 132 || file.toString('latin1', 128, 132) !== 'DICM') throw new Error('not DICOM Part 10');
  const elements = new Map<string, DicomElement>();
  let at = 132;
  while (at + 8 <= file.length) {
    const tag = `${file.readUInt16LE(at).toString(16)}${file
      .readUInt16LE(at + 2)
      .toString(16)
      .padStart(4, '0')}`
      .padStart(8, '0')
      .toUpperCase();
    const vr = file.toString('latin1', at + 4, at + 6);
    const long = LONG_FORM.has(vr);
    const length = long ? file.readUInt32LE(at + 8) : file.readUInt16LE(at + 6);
    const start = at + (long ? 12 : 8);
    if (tag === PIXEL_DATA) return elements;
    if (start + length > file.length) throw new Error('truncated element');
    if (!tag.startsWith('0002')) {
      const text = long ? '' : file.toString('latin1', start, start + length).replace(/[\s\0]+$/, '');
      elements.set(tag, { vr, text });
    }
    at = start + length;
  }
  throw new Error('no pixel data');
};

/** DICOM JSON (PS3.18 F.2) of the identifying attributes, as a QIDO-RS answer or metadata lists them. */
export const dicomJson = (
  elements: ReadonlyMap<string, DicomElement>,
  leaveOut: ReadonlySet<string> = new Set(),
): Record<string, unknown> =>
  Object.fromEntries(
    Object.values(IDENTITY_ATTRIBUTES)
      .filter((tag) => !leaveOut.has(tag))
      .flatMap((tag) => {
        const element = elements.get(tag.toUpperCase());
        if (element === undefined) return [];
        const { vr, text } = element;
        if (text === '') return [[tag, { vr }]];
        const value = vr === 'PN' ? { Alphabetic: text } : vr === 'IS' ? Number(text) : text;
        return [[tag, { vr, Value: [value] }]];
      }),
  );
