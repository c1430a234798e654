/** Types of bin/sources.mjs (plain JS, so that bin/grovefs.mjs can use it before any loader). */
export declare const sourceDirs: readonly string[];
export declare function distDir(root: string): string;
export declare function buildStamp(root: string): string;
export declare function builtIsCurrent(root: string): boolean;
