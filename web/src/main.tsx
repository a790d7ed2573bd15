import { createRoot } from 'react-dom/client';
import { App } from './App';
import { dashboard } from './lib/store';
import './styles.css';

// the fleet's machine list, asked for by index.html's first script
const early = (window as { __twinlineFleet?: { at: number; res: Promise<Response> } }).__twinlineFleet;
if (early) dashboard.prefetchFleet(early.res, early.at);

createRoot(document.getElementById('root')!).render(<App />);
