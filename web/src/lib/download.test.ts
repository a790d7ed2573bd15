import { describe, expect, it } from 'vitest';
import { alarmsCsvUrl, exportUrl, fleetCsvUrl, seriesCsvUrl } from './download';

describe('download URLs', () => {
  it('exports the shown metrics of a machine over the shown range', () => {
    const u = new URL(exportUrl('press 7/a', ['temp', 'rpm'], { from: 1000.4, to: 2000.2 }), 'http://x');
    expect(u.pathname).toBe('/api/v1/export');
    expect(u.searchParams.get('machine')).toBe('press 7/a');
    expect(u.searchParams.getAll('metric')).toEqual(['temp', 'rpm']);
    expect(u.searchParams.get('from')).toBe('1000');
    expect(u.searchParams.get('to')).toBe('2001');
    expect(u.searchParams.get('format')).toBe('csv');
    expect(new URL(exportUrl('m', [], { from: 0, to: 1 }, 'parquet'), 'http://x').searchParams.get('format')).toBe('parquet');
  });

  it('escapes the machine in the series path', () => {
    expect(seriesCsvUrl('a/b c', 'temp', { from: 1, to: 2 })).toBe('/api/v1/machines/a%2Fb%20c/series?metric=temp&from=1&to=2&format=csv');
  });

  it('asks the tables as CSV', () => {
    expect(fleetCsvUrl()).toBe('/api/v1/machines?format=csv');
    expect(alarmsCsvUrl('all')).toBe('/api/v1/alarms?state=all&format=csv');
    expect(alarmsCsvUrl('active')).toBe('/api/v1/alarms?state=active&format=csv');
  });
});
