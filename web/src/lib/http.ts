/** The error every API call throws for a non-2xx answer, with the problem's detail (RFC 9457). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** The problem document's detail (or title, or the status text). */
    readonly detail: string = message,
  ) {
    super(message);
  }
}

/** Reads a failed response's problem+json document into an ApiError. */
export async function errorFrom(res: Response): Promise<ApiError> {
  let detail = res.statusText;
  try {
    const p = await res.json();
    detail = p.detail || p.title || detail;
  } catch {
    /* not a problem document */
  }
  return new ApiError(res.status, `${res.status} ${detail}`, detail);
}
