/**
 * Checks that a text (log output, a status report, an error, a state file) shows no patient data
 * and no credentials.
 */
import { expect } from 'vitest';
import type { GeneratedSet } from '../../testbed/dicom-generator.ts';

/** Every identifying value of the generated sets, in every form a log could show it. */
export const expectNoPhi = (text: string, sets: readonly GeneratedSet[]): void => {
  expect(text.length).toBeGreaterThan(0);
  for (const set of sets) {
    const birthDates = new Set(set.patients.map((patient) => patient.birthDate));
    for (const value of set.phiValues()) {
      // A birth date is 8 bare digits: only as a whole JSON string is a match not a coincidence.
      const needle = birthDates.has(value) ? JSON.stringify(value) : value;
      expect(text.includes(needle), `PHI value ${needle} in the output`).toBe(false);
    }
    for (const instance of set.instances) {
      for (const value of [
        instance.study.studyDescription,
        instance.series.seriesDescription,
        instance.patient.patientName.replace('^', ' '),
      ]) {
        expect(text.includes(value), `PHI value ${value} in the output`).toBe(false);
      }
    }
  }
};

export interface Credentials {
  readonly username: string;
  readonly password: string;
}

/** The forms a password could leak in: as such, URL-encoded, and as a basic-auth header's value. */
export const secretForms = ({ username, password }: Credentials): string[] => [
  password,
  encodeURIComponent(password),
  Buffer.from(`${username}:${password}`).toString('base64'),
  Buffer.from(password).toString('base64'),
];

export const expectNoSecret = (text: string, credentials: readonly Credentials[]): void => {
  for (const entry of credentials) {
    expect(entry.password.length, 'a password distinctive enough to search for').toBeGreaterThanOrEqual(12);
    for (const form of secretForms(entry)) {
      expect(text.includes(form), `a form of the password of ${entry.username} in the output`).toBe(false);
    }
  }
};

/**
 * An error message a person can act on: it names the server by its origin and says what went
 * wrong, and it shows no credentials.
 */
export const expectClearError = (
  text: string | undefined,
  origin: string,
  problem: RegExp,
  credentials: readonly Credentials[],
): void => {
  expect(text).toBeDefined();
  expect(text).toContain(origin);
  expect(text).toMatch(problem);
  expectNoSecret(text as string, credentials);
};
