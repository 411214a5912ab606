"""Labelled answer pairs for the math verifier, written for this project: (gold, answer, label).

`answer` is a bare final answer (the tests wrap it as `... \\boxed{answer}` unless the category says
otherwise); label 1 means mathematically the same answer, 0 a different one. ADVERSARIAL pairs are all
wrong answers that a float tolerance, a lax parser or a format trick would accept: a verifier must score
every one of them 0.
"""

INTEGERS_DECIMALS = [
    ("42", "42", 1), ("42", "042", 1), ("42", "42.0", 1), ("42", "42.000", 1), ("-7", "-7", 1), ("-7", "7", 0),
    ("0", "0", 1), ("0", "-0", 1), ("0", "0.0", 1), ("1000", "1,000", 1), ("1000", "1\\,000", 1),
    ("1000000", "1,000,000", 1), ("58,500", "58500", 1), ("10,\\!080", "10080", 1), ("10080", "10,\\!080", 1),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100", 1), ("\\$32,\\!348", "32348", 1), ("\\$32,\\!348", "\\$32,348", 1),
    ("3.21", "3.210", 1), ("3.21", "3.2", 0), ("3.21", "321/100", 1), (".35625", "0.35625", 1), (".0000672", "6.72 \\times 10^{-5}", 1),
    (".0000672", "6.72e-5", 1), ("0.15", "\\frac{3}{20}", 1), ("0.15", "0.16", 0), ("326.5", "326\\frac{1}{2}", 1),
    ("4.5", "\\frac92", 1), ("4.5", "4.05", 0), ("17", "17.01", 0), ("1.25", "\\frac{5}{4}", 1), ("100", "10^2", 1),
    ("1024", "2^{10}", 1), ("1023", "2^{10}", 0), ("720", "6!", 1), ("5040", "7!", 1), ("120", "\\binom{10}{3}", 1),
    ("121", "11^2", 1), ("3", "\\sqrt{9}", 1), ("-3", "\\sqrt{9}", 0), ("2", "\\sqrt[3]{8}", 1), ("5", "\\frac{10}{2}", 1),
    ("27", "27.0", 1), ("7425000", "7,425,000", 1), ("1000.99", "1,000.99", 1), ("2.74", "2,74", 1),
    ("12", "12 \\text{ apples}", 1), ("50", "50 \\text{ students}", 1),
]

FRACTIONS = [
    ("\\frac{3}{4}", "0.75", 1), ("\\frac{3}{4}", "3/4", 1), ("\\frac{3}{4}", "\\dfrac{3}{4}", 1), ("\\frac{3}{4}", "\\frac34", 1),
    ("\\frac{3}{4}", "\\tfrac{6}{8}", 1), ("\\frac{3}{4}", "\\frac{4}{3}", 0), ("\\frac{3}{4}", "0.7", 0), ("\\frac{3}{4}", "75\\%", 1),
    ("\\frac 59", "\\frac{5}{9}", 1), ("\\frac9{19}", "9/19", 1), ("-\\frac{35}{9}", "-35/9", 1), ("-\\frac{35}{9}", "\\frac{-35}{9}", 1),
    ("-\\frac{35}{9}", "\\frac{35}{-9}", 1), ("-\\frac{35}{9}", "\\frac{35}{9}", 0), ("-\\frac{35}{9}", "-3\\frac{8}{9}", 1),
    ("1\\frac{4}{5}", "\\frac{9}{5}", 1), ("1\\frac{4}{5}", "1.8", 1), ("1\\frac{4}{5}", "\\frac{4}{5}", 0), ("137 \\frac{1}{2}", "275/2", 1),
    ("\\frac{1}{3}", "0.\\overline{3}", 1), ("\\frac{1}{6}", "0.1\\overline{6}", 1), ("\\frac{2}{3}", "0.\\overline{6}", 1),
    ("\\frac{1}{3}", "\\frac{2}{6}", 1), ("\\frac{1}{3}", "\\frac{1}{3.0}", 1), ("\\frac{448}{15625}", "0.028672", 1),
    ("\\frac{1}{12}", "0.0833333333333333", 1), ("\\frac{14}{3}", "4\\frac{2}{3}", 1), ("\\frac{14}{3}", "4.67", 0),
    ("\\frac{243}{625}", "\\frac{3^5}{5^4}", 1), ("\\frac{2}{1005}", "\\frac{4}{2010}", 1), ("\\frac{2}{1005}", "\\frac{2}{1006}", 0),
    ("\\frac{11}{36}", "\\frac{11}{36}", 1), ("\\frac{1}{2}", "\\left(\\frac{1}{2}\\right)", 1), ("\\frac{1}{2}", "{\\frac{1}{2}}", 1),
]

RADICALS_CONSTANTS = [
    ("2\\sqrt{2}", "\\sqrt{8}", 1), ("2\\sqrt{2}", "2\\sqrt2", 1), ("2\\sqrt{2}", "\\sqrt{2}\\cdot 2", 1), ("2\\sqrt{2}", "2^{3/2}", 1),
    ("2\\sqrt{2}", "\\sqrt{6}", 0), ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", 1), ("\\frac{\\sqrt{3}}{3}", "\\frac{\\sqrt3}{2}", 0),
    ("3\\sqrt{13}", "\\sqrt{117}", 1), ("1+\\sqrt{2}", "\\sqrt{3+2\\sqrt{2}}", 1), ("\\sqrt{2}+\\sqrt{5}", "\\sqrt5+\\sqrt2", 1),
    ("\\sqrt[3]{2}", "2^{1/3}", 1), ("\\sqrt[3]{2}", "2^{1/2}", 0), ("11 \\sqrt{5} + 11", "11(1+\\sqrt{5})", 1),
    ("\\pi", "\\pi", 1), ("12\\pi", "12 \\pi", 1), ("12\\pi", "\\pi \\cdot 12", 1), ("12\\pi", "37.7", 0), ("\\frac{\\pi}{6}", "\\pi/6", 1),
    ("-\\frac{\\pi}{6}", "\\frac{-\\pi}{6}", 1), ("\\frac{20000}{\\pi}", "20000/\\pi", 1), ("18+2\\pi", "2\\pi+18", 1),
    ("e", "e^1", 1), ("e^2", "e \\cdot e", 1), ("\\ln 8", "3\\ln 2", 1), ("\\log_2 8", "3", 1), ("\\log_2 8", "4", 0),
    ("6 - 5i", "6-5i", 1), ("6 - 5i", "-5i+6", 1), ("6 - 5i", "6+5i", 0), ("1+2i", "(1+i)^2 + 1", 1), ("i", "\\sqrt{-1}", 1),
    ("-1", "i^2", 1), ("1 - 12i", "1-12 i", 1), ("-2 + 7i", "-2+7i", 1), ("\\cos\\frac{\\pi}{3}", "\\frac{1}{2}", 1),
    ("\\frac{1+\\sqrt{5}}{4}", "\\cos\\frac{\\pi}{5}", 1), ("\\sin\\frac{\\pi}{4}", "\\frac{\\sqrt{2}}{2}", 1),
]

BIG_NUMBERS = [
    ("10^{-10}", "10^{-10}", 1), ("10^{-10}", "0.0000000001", 1), ("10^{-10}", "10^{-11}", 0), ("10^{-10}", "0", 0),
    ("2^{100}", "2^{100}", 1), ("2^{100}", "1267650600228229401496703205376", 1), ("2^{100}", "2^{100}+1", 0),
    ("2^{100}", "1267650600228229401496703205377", 0), ("\\frac{1}{2004!}", "\\frac{1}{2004!}", 1),
    ("\\frac{1}{2004!}", "\\frac{1}{2006!}", 0), ("\\frac{1}{2004!}", "0", 0), ("3^{1000}", "3^{1000}", 1), ("3^{1000}", "3^{1001}", 0),
    ("10^{100}+1", "10^{100}", 0), ("\\frac{1}{10^{20}}", "10^{-20}", 1), ("\\frac{1}{10^{20}}", "10^{-21}", 0),
    ("1.000000000001", "1", 0), ("999999999999", "10^{12}", 0), ("2^{64}", "18446744073709551616", 1),
    ("2^{64}", "1.8446744073709552 \\times 10^{19}", 0), ("\\sqrt{2}\\cdot 2^{60}", "\\sqrt{2}\\cdot (2^{60}+1)", 0),
    ("\\pi + 10^{-30}", "\\pi", 0), ("e^{-100}", "0", 0), ("100!", "100!", 1), ("100!", "99! \\cdot 100", 1), ("100!", "101!", 0),
]

EXPRESSIONS = [
    ("(x+1)^2", "x^2+2x+1", 1), ("(x+1)^2", "x^2+x+1", 0), ("x^2-1", "(x-1)(x+1)", 1), ("2k+2", "2(k+1)", 1), ("2k+2", "2k+1", 0),
    ("p - q", "-q+p", 1), ("p - q", "q - p", 0), ("(a+5)(b+2)", "ab+2a+5b+10", 1), ("(a+5)(b+2)", "(a+2)(b+5)", 0),
    ("\\frac{11+9a}{20}", "\\frac{11}{20}+\\frac{9a}{20}", 1), ("\\frac{x+2}{7}", "\\frac{x}{7}+\\frac{2}{7}", 1),
    ("x^3+3x-6", "3x+x^3-6", 1), ("6r^2-4r-24", "2(3r^2-2r-12)", 1), ("5r^5", "5 r^{5}", 1), ("3R^2", "3r^2", 0),
    ("\\cot x", "\\frac{\\cos x}{\\sin x}", 1), ("\\tan^2 y + 1", "\\sec^2 y", 1), ("\\sin^2 x + \\cos^2 x", "1", 1),
    ("2 \\sin b \\cos a", "2\\cos a \\sin b", 1), ("2 \\sin b \\cos a", "2\\sin a \\cos b", 0), ("\\frac{1}{x}", "x^{-1}", 1),
    ("x^8 + x^7 + x^6 + x^5 + x^4 + x^3 + x^2 + x + 1", "\\frac{x^9-1}{x-1}", 1), ("15x - 80", "5(3x-16)", 1),
    ("15x - 80", "15x-8", 0), ("\\sqrt{x^2}", "x", 0), ("|x|", "\\sqrt{x^2}", 1), ("e^{x}e^{y}", "e^{x+y}", 1), ("x+y", "x+z", 0),
    ("n(n+1)/2", "\\frac{n^2+n}{2}", 1), ("8n^2 + 4n + 1", "4n(2n+1)+1", 1), ("x^5 - x^4 + x^3 - x^2 + x - 1", "(x-1)(x^4+x^2+1)", 1),
]

EQUATIONS = [
    ("y = 2x + 3", "y=3+2x", 1), ("y = 2x + 3", "y - 2x = 3", 1), ("y = 2x + 3", "y = 2x - 3", 0), ("2x - y = 4", "y = 2x - 4", 1),
    ("2x - y = 4", "4x - 2y = 8", 1), ("2x - y = 4", "2x + y = 4", 0), ("y = -2x", "2x + y = 0", 1), ("x = 5", "5", 1),
    ("x = 5", "x=5", 1), ("x = 5", "5 = x", 1), ("x = 5", "y = 5", 0), ("x = 5", "6", 0), ("5", "x = 5", 1), ("5", "x = 2+3 = 5", 1),
    ("5x - 7y + 11z + 4 = 0", "-5x + 7y - 11z - 4 = 0", 1), ("5x - 7y + 11z + 4 = 0", "5x-7y+11z=-4", 1),
    ("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z - 4 = 0", 0), ("x^2 + y^2 = 25", "x^2 = 25 - y^2", 1), ("x^2 + y^2 = 25", "x^2+y^2=5", 0),
    ("\\frac{x^2}{4} + \\frac{y^2}{9} = 1", "9x^2 + 4y^2 = 36", 1), ("x < 3", "3 > x", 1), ("x < 3", "x \\le 3", 0),
    ("x \\geq 5", "5 \\leq x", 1), ("x \\geq 5", "x \\leq 5", 0), ("x < 1", "-x > -1", 1), ("x < 1", "x > -1", 0),
    ("k = \\frac{1}{3}", "\\frac13", 1), ("y = x^2 - 4x + 3", "y = (x-1)(x-3)", 1), ("y = x^2 - 4x + 3", "y = (x-1)(x+3)", 0),
]

INTERVALS = [
    ("[1, 2)", "[1,2)", 1), ("[1, 2)", "(1, 2)", 0), ("[1, 2)", "[1, 2]", 0), ("[1, 2)", "1 \\le x < 2", 1), ("(3,4]", "(3, 4]", 1),
    ("(3,4]", "[3,4)", 0), ("(-\\infty, 0]", "x \\le 0", 1), ("(-\\infty, 0]", "(-\\infty, 0)", 0), ("(2,\\infty)", "x > 2", 1),
    ("(2,\\infty)", "(2, \\infty)", 1), ("(2,\\infty)", "[2, \\infty)", 0), ("(5,\\infty)", "(5,+\\infty)", 1),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,\\infty)", 1), ("(-\\infty, 2) \\cup (3, \\infty)", "(3, \\infty) \\cup (-\\infty, 2)", 1),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty, 3) \\cup (2, \\infty)", 0), ("(-\\infty, 2) \\cup (3, \\infty)", "x<2 \\text{ or } x>3", 1),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, \\frac{8}{3}]", 1), ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, 2.67]", 0),
    ("\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "[\\pi^2/8, 5\\pi^2/4]", 1), ("x \\in [-2,7]", "[-2, 7]", 1),
    ("x \\in [-2,7]", "-2 \\le x \\le 7", 1), ("x \\in [-2,7]", "[-2, 7)", 0), ("(0,9) \\cup (9,36)", "(0,36) \\setminus \\{9\\}", 1),
    ("(-\\sqrt{3}, \\sqrt{3})", "-\\sqrt3 < x < \\sqrt3", 1), ("[0,1)", "[0, 1)", 1), ("[0,1)", "(0,1)", 0),
]

SETS_TUPLES = [
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", 1), ("(3, \\frac{\\pi}{2})", "(\\frac{\\pi}{2}, 3)", 0),
    ("(1,-16,-4,43)", "(1, -16, -4, 43)", 1), ("(1,-16,-4,43)", "(43,-4,-16,1)", 0), ("(1,-16,-4,43)", "(1,-16,-4)", 0),
    ("(6,31,-1)", "(p,q,r) = (6,31,-1)", 1), ("\\left( \\frac{3}{2}, -13 \\right)", "(1.5, -13)", 1), ("(8,-2)", "(8, -2)", 1),
    ("(8,-2)", "(-2, 8)", 0), ("\\{1,2,3\\}", "\\{3,2,1\\}", 1), ("\\{1,2,3\\}", "\\{1,2\\}", 0), ("\\{1,2,3\\}", "\\{1,2,3,4\\}", 0),
    ("3, 5, 7", "7, 5, 3", 1), ("3, 5, 7", "3, 5", 0), ("-2,1", "1, -2", 1), ("-2,1", "-2", 0), ("1,-2", "x = 1, -2", 1),
    ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}", 1), ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}", 0),
    ("3 \\pm 2 \\sqrt{2}", "3-2\\sqrt2, 3+2\\sqrt2", 1), ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1+\\sqrt5, 1-\\sqrt5", 1),
    ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1+\\sqrt5", 0), ("\\pm 2021", "2021, -2021", 1), ("\\pm 2021", "2021", 0),
    ("(1,2), (3,4)", "(3,4), (1,2)", 1), ("(1,2), (3,4)", "(2,1), (4,3)", 0), ("\\emptyset", "\\varnothing", 1), ("\\emptyset", "\\{0\\}", 0),
]

MATRICES = [
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{bmatrix}-1&0\\\\0&-1\\end{bmatrix}", 1),
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & 1 \\end{pmatrix}", 0),
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "-\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", 1),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}", 0),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}", "\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}", 1),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}", "\\frac{1}{3}\\begin{pmatrix} -1 \\\\ 2 \\\\ 5 \\end{pmatrix}", 1),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}", "(-1/3, 2/3, 5/3)", 1),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}", "(2/3, -1/3, 5/3)", 0),
    ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}", 1),
    ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{pmatrix} 1/5 & -18/5 \\end{pmatrix}", 0),
    ("\\begin{pmatrix} 6 & 8 \\\\ 10 & 12 \\end{pmatrix}",
     "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix} + \\begin{pmatrix} 5 & 6 \\\\ 7 & 8 \\end{pmatrix}", 1),
]

UNITS_TEXT_CHOICE = [
    ("90^\\circ", "90", 1), ("90^\\circ", "90^{\\circ}", 1), ("90^\\circ", "90°", 1), ("90^\\circ", "90 \\text{ degrees}", 1),
    ("90^\\circ", "89^\\circ", 0), ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", 1), ("15\\mbox{ cm}^2", "15", 1),
    ("15\\mbox{ cm}^2", "15 \\text{ cm}^2", 1), ("15\\mbox{ cm}^2", "225", 0), ("864 \\mbox{ inches}^2", "864", 1),
    ("5.4 \\text{ cents}", "5.4", 1), ("\\$18.90", "18.90", 1), ("\\$18.90", "\\$18.9", 1), ("\\$18.90", "18.09", 0),
    ("10\\%", "10", 1), ("10\\%", "10\\%", 1), ("10\\%", "0.1", 1), ("10\\%", "10 \\text{ percent}", 1), ("10\\%", "11\\%", 0),
    ("20", "20\\%", 1), ("0.28", "28\\%", 1), ("28", "0.28", 0), ("\\text{Evelyn}", "Evelyn", 1), ("\\text{Evelyn}", "\\text{evelyn}", 1),
    ("\\text{Evelyn}", "\\text{Briana}", 0), ("\\text{east}", "East", 1), ("\\text{even}", "\\text{odd}", 0), ("\\text{even}", "even", 1),
    ("\\text{ellipse}", "\\text{an ellipse}", 1), ("\\text{ellipse}", "\\text{hyperbola}", 0), ("\\text{(B)}", "B", 1),
    ("\\text{(B)}", "(B)", 1), ("\\text{(B)}", "\\textbf{(B)}", 1), ("\\text{(B)}", "C", 0), ("\\text{(B)}", "(B) 12", 1),
    ("\\text{(C)}", "\\text{(C)}", 1), ("\\text{(C)}", "\\text{(E)}", 0), ("204_5", "204_5", 1), ("204_5", "204", 1),
    ("204_5", "54", 0), ("204_5", "204_6", 0), ("4210_{5}", "4210_5", 1), ("2516_8", "1358", 0),
]

# More ways of writing the same answer, and near misses.
OTHER_FORMS = [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", 1), ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}^\\circ", 1),
    ("y = -2x", "-2x", 1), ("y = -2x", "y=-2 x", 1), ("3, 5, 7", "\\{3,5,7\\}", 1), ("-2 + 7i", "7i - 2", 1),
    ("\\text{(C)}", "\\text{C}", 1), ("\\text{(C)}", "\\mathrm{(C)}", 1), ("\\text{(C)}", "C or D", 0), ("\\text{(C)}", "(C), (D)", 0),
    ("\\frac{\\sqrt{3}}{3}", "3^{-1/2}", 1), ("\\frac{\\sqrt{3}}{3}", "\\sqrt{\\frac{1}{3}}", 1), ("2\\sqrt{5}", "2\\times\\sqrt5", 1),
    ("2\\sqrt{5}", "4.472135955", 0), ("(2,12) \\cup (12,102)", "(2,102) \\setminus \\{12\\}", 1), ("[-2,7]", "-2\\leq x\\leq 7", 1),
    ("\\frac{1}{2}", "50\\%", 1), ("50\\%", "\\frac{1}{2}", 1), ("\\$36", "36 \\text{ dollars}", 1), ("\\$36", "\\$36.00", 1),
    ("12", "12 \\mathrm{~cm}", 1), ("12", "12~\\text{cm}^2", 1), ("5", "\\textbf{5}", 1), ("\\frac{1}{4}", "1:4", 0), ("2:1", "2:1", 1),
    ("\\text{no solution}", "\\text{No solution}", 1), ("(1, 2]", "1 < x \\leq 2", 1), ("(-1,6)", "x=-1, y=6", 1),
    ("\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}", "\\langle -7, 16, 5 \\rangle", 1), ("\\sqrt{2}", "\\sqrt{2.0}", 1),
    ("6", "6.0\\%", 1), ("e^{i\\pi}", "-1", 1), ("\\dfrac{\\pi}{4}", "45^\\circ", 1), ("45^\\circ", "\\frac{\\pi}{4}", 1),
    ("45^\\circ", "0.785398163397", 0), ("\\ln 2", "\\log 2", 1), ("3", "\\lfloor \\pi \\rfloor", 1), ("10", "{5 \\choose 2}", 1),
    ("\\frac{x+1}{x-1}", "\\frac{x-1}{x+1}", 0), ("x = 2, y = 3", "y = 3, x = 2", 1), ("x = 2, y = 3", "(2, 3)", 1),
    ("x = 2, y = 3", "(3, 2)", 0), ("1000000", "10^6", 1), ("1000000", "1e6", 1), ("0.001", "1e-3", 1), ("0.001", "1e-4", 0),
    ("\\frac{1}{3}", "0.3333333333333333", 1), ("3", "3.0000000000000001", 0), ("\\pi", "3.141592653589793", 1),
    ("\\frac52", "2 1/2", 1), ("2", "2 1/2", 0), ("(-\\infty,\\infty)", "\\mathbb{R}", 1),
    ("(-\\infty,\\infty)", "\\text{all real numbers}", 1), ("(-\\infty,\\infty)", "[0, \\infty)", 0),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "[[1,2],[3,4]]", 1), ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "[[1,2],[4,3]]", 0),
    ("25", "25 square units", 1), ("\\text{square}", "square", 1), ("\\text{square}", "circle", 0), ("12", "12 sq. ft", 1),
    ("\\sin 2x", "2\\sin x\\cos x", 1), ("\\log_2 x", "\\frac{\\ln x}{\\ln 2}", 1), ("\\frac{\\pi}{4}", "\\arctan 1", 1),
    ("2^{x+1}", "2 \\cdot 2^x", 1), ("x + y = 5", "y = 5 - x", 1), ("1,234,567", "1 234 567", 1), ("+5", "5", 1),
]

# Full responses (not wrapped): extraction from prose, thinking, fall-backs.
RESPONSES = [
    ("18", "Janet sells 9 eggs at $2 each, so she makes $\\boxed{18}$ dollars.", 1),
    ("18", "<think>\nmaybe \\boxed{17}?\n</think>\nShe makes \\boxed{18} dollars.", 1),
    ("18", "<think>\nmaybe \\boxed{18}?\n</think>\nShe makes \\boxed{17} dollars.", 0),
    ("18", "First \\boxed{12}, then correcting myself the total is \\boxed{18}.", 1),
    ("\\frac{1}{2}", "The final answer is $\\frac{1}{2}$. I hope it is correct.", 1),
    ("34", "Final Answer: The largest $n$ is 34.", 1),
    ("34", "So the answer is 34.", 1),
    ("34", "**Answer: 34**", 1),
    ("7.78", "Anna pays about $7.78. The final answer is 7.78.", 1),
    ("12000023", "Adding gives $12,\\!000,\\!023$. Final Answer: The final answer is 12,000,023.", 1),
    ("(7, 6)", "So the ordered pair that solves the system is $(7, 6)$.", 1),
    ("(7, 6)", "So the ordered pair that solves the system is $(6, 7)$.", 0),
    ("-2,1", "The integer roots are \\boxed{-2} and \\boxed{1}.", 1),
    ("-2,1", "The integer roots are \\boxed{-2} and \\boxed{3}.", 0),
    ("9", "I could not decide.", 0),
    ("9", "", 0),
]

# Every one of these is wrong; a verifier that scores any of them 1 can be gamed.
ADVERSARIAL = [
    ("10^{-10}", "10^{-11}", 0), ("2^{100}", "2^{100}+1", 0), ("\\frac{1}{2004!}", "\\frac{1}{2006!}", 0),
    ("1.25", "1.25000000001", 0), ("\\frac{1}{3}", "0.333", 0), ("\\frac{1}{3}", "0.33", 0), ("\\pi", "3.14", 0),
    ("\\pi", "3.14159", 0), ("\\sqrt{2}", "1.414", 0), ("\\frac{2}{3}", "0.67", 0), ("e", "2.718", 0),
    ("5", "1 = 5", 0), ("5", "2+2=5", 0), ("5", "5 \\text{ or } 6", 0), ("5", "5, 6", 0), ("5", "\\{5, 6\\}", 0), ("5", "\\pm 5", 0),
    ("5", "4 < x < 6", 0), ("5", "[4, 6]", 0), ("5", "x", 0), ("5", "\\infty", 0), ("5", "\\frac{0}{0}", 0), ("5", "\\frac{5}{0}", 0),
    ("0", "\\frac{0}{0}", 0), ("5", "\\text{5 or 6}", 0), ("5", "55", 0), ("5", "-5", 0), ("5", "50\\%", 0), ("5", "\\boxed{}", 0),
    ("3", "3x", 0), ("x+1", "x", 0), ("x^2+2x+1", "(x+1)^3", 0), ("\\{1,2\\}", "\\{1,2,3\\}", 0), ("(1,2)", "(2,1)", 0),
    ("(1,2)", "[1,2]", 0), ("[1,2]", "(1,2)", 0), ("\\text{(B)}", "A, B, C, D, E", 0), ("\\text{(B)}", "\\text{(A) or (B)}", 0),
    ("\\text{Evelyn}", "\\text{Evelyn or Briana}", 0), ("\\text{even}", "\\text{not even}", 0), ("x = 5", "x = 5 \\text{ or } x = 6", 0),
    ("y = 2x + 3", "y = 2x + 3.000001", 0), ("1000", "1000.0001", 0), ("10^{100}", "10^{100} + 10^{-100}", 0),
    ("e^{-100}", "0", 0), ("\\pi + 10^{-30}", "\\pi", 0), ("0", "10^{-30}", 0), ("0", "e^{-100}", 0), ("1", "0.999999999", 0),
    ("\\frac{1}{7}", "0.142857", 0), ("2^{64}", "1.8446744073709552 \\times 10^{19}", 0), ("120", "\\text{120 or 121}", 0),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "1", 0), ("204_5", "54", 0), ("10\\%", "1", 0), ("90^\\circ", "\\frac{\\pi}{2} + 1", 0),
    ("\\text{(B)}", "B or C", 0), ("\\text{(B)}", "B, C", 0), ("x = 5", "0 = 0", 0), ("y = 2x + 3", "y = y", 0), ("0", "0 \\cdot \\infty", 0),
    ("1", "1^{\\infty}", 0), ("\\infty", "\\frac{1}{0}", 0), ("2", "\\sqrt{4}, -\\sqrt{4}", 0), ("3", "3.0000000000000001", 0),
]

# Issue #12: wrong answers that a constant-answer attack or a crafted answer got paid, one class per line.
CONSTANT_HACKS = [
    # a numeral with a digit its base lacks is no number (it used to equal any gold it could not be read in)
    ("9", "9_2", 0), ("255", "255_2", 0), ("023", "9_{2}", 0), ("19", "19_8", 0), ("1", "1_1", 0), ("10", "10_{1}", 0),
    ("5", "5_0", 0), ("10", "9_2 + 1", 0), ("52_8", "9_2", 0), ("52_8", "58_8", 0), ("255", "255_{2}", 0),
    # an empty reading of an interval: a reversed interval, a contradiction, a point read as an interval
    ("(3, \\frac{\\pi}{2})", "[1, 0]", 0), ("(15,-29)", "(\\infty, -\\infty)", 0), ("(8,-2)", "x < x", 0),
    ("(8,-2)", "0 < x < 0", 0), ("\\left( \\frac{3}{2}, -13 \\right)", "\\mathbb{R} \\setminus \\mathbb{R}", 0),
    ("(8,-2)", "x > \\infty", 0), ("(3, \\frac{\\pi}{2})", "(-\\infty, \\infty) \\cap \\emptyset", 0),
    # no value: undefined where the gold has a value, indeterminate forms sympy evaluates, logarithms with no base
    ("0", "0^x", 0), ("0", "\\log_0 5", 0), ("1", "\\infty^0", 0), ("0", "\\log_1 5 - \\log_1 5", 0),
    # agreement to 400 digits when the answer hides a number below 10^-300
    ("1", "1 + \\sqrt{2+10^{-900}} - \\sqrt{2}", 0), ("5", "\\sqrt{25+e^{-e^{10}}}", 0),
    # identities that hold only on a few points: the old fixed points, small integers, a half-line
    ("x^2+1", "x^2+1+(x-\\frac75)(x+\\frac{13}{11})(x-\\frac{29}{17})(x+\\frac53)(x-\\frac{41}{23})(x-\\frac37)", 0),
    ("x^2+1", "x^2+1+x(x-1)(x+1)(x-2)(x+2)(x-3)(x+3)(x-4)(x+4)", 0), ("2k+2", "2k+2+\\sin(\\pi k)", 0),
    ("x", "|x|", 0), ("x", "\\sqrt{x^2}", 0),
    # a false chain after a name; numbers side by side (a product to one parser, a sum to the other)
    ("2", "x = 1 = 2", 0), ("5", "n = 4 = 5", 0), ("2", "1 2", 0), ("3", "1 2", 0), ("0", "0 1 2 3 4 5 6 7 8 9", 0),
    ("45", "0 1 2 3 4 5 6 7 8 9", 0),
]

# A gold that does not parse as math is compared as text: it must not accept arbitrary answers.
UNPARSABLE_GOLD = [
    ("@@", "5", 0), ("@@", "@@", 1), ("3 \\pmod{7}", "3 \\pmod{7}", 1), ("3 \\pmod{7}", "3, 7", 0), ("3 \\pmod{7}", "(3)(7)", 0), ("@@", "", 0), ("", "0", 0), ("$$", "1", 0), ("\\text{}", "0", 0),
    ("The midpoints form a regular hexagon", "The midpoints form a regular hexagon", 1),
    ("The midpoints form a regular hexagon", "a square", 0),
]

BOXED_CATEGORIES = {
    "integers_decimals": INTEGERS_DECIMALS, "fractions": FRACTIONS, "radicals_constants": RADICALS_CONSTANTS,
    "big_numbers": BIG_NUMBERS, "expressions": EXPRESSIONS, "equations": EQUATIONS, "intervals": INTERVALS,
    "sets_tuples": SETS_TUPLES, "matrices": MATRICES, "units_text_choice": UNITS_TEXT_CHOICE,
    "other_forms": OTHER_FORMS, "adversarial": ADVERSARIAL, "constant_hacks": CONSTANT_HACKS,
    "unparsable_gold": UNPARSABLE_GOLD,
}


def boxed(answer: str) -> str:
    """A response that states `answer` the way models do."""
    return f"Putting it together, the final result is $\\boxed{{{answer}}}$."
