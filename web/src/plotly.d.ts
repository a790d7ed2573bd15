declare module 'plotly.js-basic-dist-min' {
  // The dist bundle ships no types; the dashboard uses this much of it.
  const Plotly: {
    react(el: HTMLElement, data: object[], layout: object, config?: object): Promise<HTMLElement>;
    purge(el: HTMLElement): void;
    Plots: { resize(el: HTMLElement): void };
  };
  export default Plotly;
}
